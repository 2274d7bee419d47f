# lib.sh -- shared helpers of the benchmarks (sourced). Benchmarks print rates and ratios
# of dbatch against a peer run side by side in the same session; absolute times on a shared
# machine mean little.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
DBATCH=${1:-$top/build/dbatch}
DATA=${DBX_DATA_DIR:-$top/data}

# Seconds (wall) taken by a command, output discarded (its standard error too, unless it
# fails: dbatch's end-of-job line would interleave with the table).
secs() {
  local t0 t1 e
  e=$(mktemp)
  t0=$(date +%s.%N)
  if ! "$@" >/dev/null 2>"$e"; then cat "$e" >&2; fi
  t1=$(date +%s.%N)
  rm -f "$e"
  echo "$t1 - $t0" | bc -l
}

# Best of N runs: the machine is shared, the minimum is the least disturbed.
best_of() {
  local n=$1 best="" t
  shift
  for _ in $(seq "$n"); do
    t=$(secs "$@")
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}

# A text file of at least MB megabytes made of the SpamAssassin mails (real e-mail text),
# cached under data/bench/.
bench_text() {
  local mb=$1 f=$DATA/bench/mail-${1}mb.txt
  if [ ! -f "$f" ]; then
    local root
    root=$("$top/scripts/fetch-spamassassin.sh")
    mkdir -p "$DATA/bench"
    find "$root" -name '*.txt' | sort | xargs cat > "$f.one"
    : > "$f.tmp"
    while [ "$(stat -c %s "$f.tmp")" -lt $((mb * 1024 * 1024)) ]; do cat "$f.one" >> "$f.tmp"; done
    rm -f "$f.one"
    mv "$f.tmp" "$f"
  fi
  echo "$f"
}

ratio() { echo "scale=2; $1 / $2" | bc -l; }
mbps() { echo "scale=1; $1 / 1048576 / $2" | bc -l; }
