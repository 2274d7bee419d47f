#!/bin/sh
# fuzz.sh -- build and run dbatch's libFuzzer targets (tests/fuzz/), one at a time.
#
#   scripts/fuzz.sh [run] [TARGET...]   replay the regressions, then fuzz each target for
#                                      FUZZ_SECONDS (default 60); exit 1 on any finding
#   scripts/fuzz.sh build               only build (clang, into build-fuzz/)
#   scripts/fuzz.sh seeds               rewrite the seed corpora tests/fuzz/corpus/ from the
#                                      real encoders (gen_seeds)
#   scripts/fuzz.sh keep TARGET CRASH NAME
#                                      minimise a crash input and save it as the regression
#                                      tests/fuzz/regressions/TARGET/NAME
#   scripts/fuzz.sh list                the target names
#
# Environment: FUZZ_SECONDS (per target), FUZZ_REPLAY=0 (skip replaying the regression inputs
# in tests/fuzz/regressions/<target>/, e.g. while a known crash is being fixed), FUZZ_BUILD
# (default build-fuzz), FUZZ_ARGS (extra libFuzzer flags), CC (default clang).
#
# The committed seed corpus is read, never written: what a run discovers goes to
# $FUZZ_BUILD/corpus/<target>/, crash inputs to $FUZZ_BUILD/artifacts/<target>/. A crash
# becomes a regression by minimising it and copying it into tests/fuzz/regressions/<target>/
# (the message printed with a finding gives the commands).
set -eu
cd "$(dirname "$0")/.."
here=$(pwd)
build=${FUZZ_BUILD:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
replay=${FUZZ_REPLAY:-1}
jobs=$(nproc 2>/dev/null || echo 2)
TARGETS="wire op_wordcount op_noop op_nb_vocab op_nb_fit op_nb_predict model_file corpus_tsv corpus_jsonl json reader_gz reader_zst rec_csv rec_tsv rec_jsonl kv op_reduce_cmd keys pg_copy tokenize follow_state count_out"

# Findings must be readable in a CI log: symbolized stacks, UBSan stacks, no recovery.
sym=/usr/lib/llvm-14/bin/llvm-symbolizer
command -v llvm-symbolizer >/dev/null 2>&1 && sym=$(command -v llvm-symbolizer)
[ -x "$sym" ] && export ASAN_SYMBOLIZER_PATH="$sym"
# Allocations over 1 GiB fail (return NULL), as on a machine without overcommit: msgpack-c
# reserves an array's storage from its header alone, so five hostile bytes ask for gigabytes;
# the decoders must then fail cleanly, and a caller that does not check for NULL is a finding.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:allocator_may_return_null=1:max_allocation_size_mb=1024}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

do_build() {
  command -v "${CC:-clang}" >/dev/null 2>&1 || {
    echo "fuzz.sh: ${CC:-clang} not found; run scripts/install-deps.sh fuzz (make fuzz does)" >&2; exit 1; }
  CC=${CC:-clang} cmake -S tests/fuzz -B "$build" -DCMAKE_BUILD_TYPE=Debug >/dev/null
  cmake --build "$build" -j "$jobs"
}

known() {
  for t in $TARGETS; do [ "$t" = "$1" ] && return 0; done
  return 1
}

# replay TARGET: every regression input must now run clean. 0 or 1.
replay() {
  t=$1
  dir=tests/fuzz/regressions/$t
  [ -d "$dir" ] || return 0
  bad=0
  for f in "$dir"/*; do
    [ -f "$f" ] || continue
    case "$f" in *.txt|*.md) continue ;; esac
    if ! "$build/fuzz_$t" -runs=1 "$f" >"$build/logs/$t.replay.log" 2>&1; then
      echo "FAIL $t: regression input $f crashes again:" >&2
      grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz invariant|.*runtime error)|^    #[0-9] ' "$build/logs/$t.replay.log" | head -12 >&2
      bad=1
    fi
  done
  return $bad
}

# fuzz TARGET: FUZZ_SECONDS of fuzzing from the seeds and what earlier runs found. 0 or 1.
fuzz() {
  t=$1
  work=$build/corpus/$t
  art=$build/artifacts/$t
  mkdir -p "$work" "$art"
  dict=""
  [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
  log=$build/logs/$t.log
  # shellcheck disable=SC2086
  if "$build/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$art/" $dict ${FUZZ_ARGS:-} "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed 's/^#\([0-9]*\)[[:space:]]*DONE[[:space:]]*/\1 runs, /')
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
    echo "ok   $t: ${stats:-?} (${rate:-?} exec/s)"
    return 0
  fi
  a=$(ls -t "$art" 2>/dev/null | head -1)
  echo "FAIL $t: finding saved as $art/$a (log: $log)" >&2
  grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz invariant|.*runtime error|==[0-9]+== ERROR: libFuzzer)|^    #[0-9] ' "$log" | head -14 >&2
  echo "  to keep it: scripts/fuzz.sh keep $t $art/$a NAME" >&2
  return 1
}

cmd=run
case "${1:-}" in run|build|seeds|list|keep) cmd=$1; shift ;; esac
case $cmd in
  keep)
    [ $# = 3 ] && known "$1" || { echo "usage: scripts/fuzz.sh keep TARGET CRASH NAME" >&2; exit 2; }
    do_build
    mkdir -p "tests/fuzz/regressions/$1" "$build/logs"
    "$build/fuzz_$1" -minimize_crash=1 -max_total_time="${FUZZ_SECONDS:-60}" \
      -exact_artifact_path="tests/fuzz/regressions/$1/$3" "$2" >"$build/logs/$1.minimize.log" 2>&1 || true
    [ -f "tests/fuzz/regressions/$1/$3" ] || cp "$2" "tests/fuzz/regressions/$1/$3"
    echo "saved tests/fuzz/regressions/$1/$3 ($(wc -c <"tests/fuzz/regressions/$1/$3") bytes)"
    exit 0 ;;
  list) echo "$TARGETS" | tr ' ' '\n'; exit 0 ;;
  build) do_build; exit 0 ;;
  seeds)
    do_build
    for t in $TARGETS; do mkdir -p "tests/fuzz/corpus/$t"; rm -f "tests/fuzz/corpus/$t"/seed-*; done
    "$build/gen_seeds" "$here/tests/fuzz/corpus"
    "$build/gen_kv_seeds" "$here/tests/fuzz/corpus"
    exit 0 ;;
esac

want=${*:-$TARGETS}
for t in $want; do known "$t" || { echo "fuzz.sh: unknown target '$t' (scripts/fuzz.sh list)" >&2; exit 2; }; done
do_build
mkdir -p "$build/logs"
failed=""
if [ "$replay" != 0 ]; then
  for t in $want; do replay "$t" || failed="$failed $t"; done
fi
for t in $want; do
  case " $failed " in *" $t "*) continue ;; esac  # it already fails: no need to find it again
  fuzz "$t" || failed="$failed $t"
done
if [ -n "$failed" ]; then
  echo "fuzz: findings in:$failed" >&2
  [ "$replay" != 0 ] && echo "fuzz: FUZZ_REPLAY=0 skips the known regression inputs" >&2
  exit 1
fi
echo "fuzz: no findings ($seconds s per target)"
