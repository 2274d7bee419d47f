#!/usr/bin/env bash
# mutate.sh -- the mutation score: apply each mutant of tests/mutation/*.mut to the source,
# one at a time, rebuild (./build-mutate), run the tests, and say which test caught it.
# A mutant no test catches is a hole in the suite (or an equivalent mutant, said so in its
# file). The source is restored after every mutant, also on Ctrl-C. Format: tests/mutation/README.md.
#
#   scripts/mutate.sh [REGEX]       only the mutants whose file name matches REGEX (e.g. '^0[1-5]-')
#   MUTATE_FULL=1                   ignore the mutants' "tests:" hints: run the whole suite
#   MUTATE_NO_BASELINE=1            skip the unmutated baseline run
#   MUTATE_CHECK=1                  only check that every mutant applies (no build, no tests)
#   BUILD=DIR JOBS=N                build directory (build-mutate), parallel jobs (nproc)
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MUTDIR=tests/mutation
BUILD=${BUILD:-build-mutate}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
PATTERN=${1:-${MUTANTS:-}}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
LOG=$BUILD/mutate-logs
mkdir -p "$LOG"

# The one helper that reads a .mut file: "check", "apply" or "get KEY".
mut() {
  "$PY" - "$@" <<'EOF'
import sys

def parse(path):
    """key: value lines; a key with an empty value takes the block between a line '<<<'
    and a line '>>>' that follow it (verbatim, no trailing newline). '#' lines outside a
    block are comments."""
    d, lines, i = {}, open(path, encoding="utf-8").read().split("\n"), 0
    while i < len(lines):
        ln = lines[i]
        i += 1
        if not ln.strip() or ln.startswith("#"):
            continue
        if ":" not in ln:
            sys.exit("%s:%d: expected 'key: value', got %r" % (path, i, ln))
        k, v = ln.split(":", 1)
        k, v = k.strip(), v.strip()
        if v == "":
            if i >= len(lines) or lines[i] != "<<<":
                sys.exit("%s:%d: '%s:' with no value must be followed by a '<<<' line" % (path, i, k))
            j = lines.index(">>>", i + 1) if ">>>" in lines[i + 1:] else -1
            if j < 0:
                sys.exit("%s:%d: block of '%s' has no closing '>>>' line" % (path, i, k))
            v = "\n".join(lines[i + 1:j])
            i = j + 1
        d[k] = v
    for k in ("file", "behaviour", "find", "replace"):
        if k not in d:
            sys.exit("%s: missing '%s:'" % (path, k))
    if d["find"] == d["replace"]:
        sys.exit("%s: 'replace' equals 'find'" % path)
    return d

cmd, path = sys.argv[1], sys.argv[2]
d = parse(path)
if cmd == "get":
    print(d.get(sys.argv[3], ""))
    sys.exit(0)
src = open(d["file"], encoding="utf-8").read()
n = src.count(d["find"])
if n != 1:
    sys.exit("%s: the 'find' snippet occurs %d times in %s (must be exactly once): update the mutant"
             % (path, n, d["file"]))
if cmd == "apply":
    with open(d["file"], "w", encoding="utf-8") as f:
        f.write(src.replace(d["find"], d["replace"]))
EOF
}

shopt -s nullglob
MUTANTS_LIST=()
for f in "$MUTDIR"/*.mut; do
  [ -n "$PATTERN" ] && ! [[ "$(basename "$f")" =~ $PATTERN ]] && continue
  MUTANTS_LIST+=("$f")
done
[ ${#MUTANTS_LIST[@]} -gt 0 ] || { echo "mutate: no mutants in $MUTDIR matching '$PATTERN'" >&2; exit 2; }

# Every mutant must apply to the current source before anything runs: a snippet that no
# longer matches (someone edited the code) is an error to fix in the mutant, not a survivor.
bad=0
for f in "${MUTANTS_LIST[@]}"; do mut check "$f" || bad=1; done
[ $bad -eq 0 ] || { echo "mutate: fix the mutants above" >&2; exit 2; }
if [ "${MUTATE_CHECK:-0}" = 1 ]; then echo "mutate: all ${#MUTANTS_LIST[@]} mutants apply"; exit 0; fi

# Restore the mutated file whatever happens (a failed build, Ctrl-C, kill).
BACKUP=""
TARGET=""
restore() {
  if [ -n "$BACKUP" ] && [ -f "$BACKUP" ]; then
    cp -p "$BACKUP" "$TARGET" && touch "$TARGET" && rm -f "$BACKUP"
    echo "mutate: restored $TARGET" >&2
  fi
  BACKUP=""
}
trap 'restore; exit 130' INT TERM
trap 'restore' EXIT

build() {
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null &&
    cmake --build "$BUILD" -j "$JOBS" >"$1" 2>&1
}

# Run ctest (regex $1, empty = all); print the names of failed tests, space separated.
run_tests() {
  local args=(--output-on-failure -j "$JOBS" --stop-on-failure)
  [ -n "$1" ] && args+=(-R "$1")
  (cd "$BUILD" && ctest "${args[@]}") >"$2" 2>&1
  local rc=$?
  grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ' "$2" | grep -vE ' Passed +[0-9.]+ sec' |
    sed -E 's/.*Test +#[0-9]+: ([^ ]+) .*/\1/' | tr '\n' ' '
  if grep -q 'No tests were found' "$2"; then echo "NO-TESTS-MATCHED"; fi
  return $rc
}

echo "mutate: building $BUILD"
build "$LOG/baseline-build.log" || { echo "mutate: the unmutated source does not build: $LOG/baseline-build.log" >&2; exit 2; }
if [ "${MUTATE_NO_BASELINE:-0}" != 1 ]; then
  echo "mutate: baseline (unmutated) suite"
  failed=$(run_tests "" "$LOG/baseline-test.log")
  if [ -n "$failed" ]; then
    echo "mutate: the suite fails without any mutant ($failed): see $LOG/baseline-test.log" >&2
    exit 2
  fi
fi

caught=0 survived=0 broken=0 equivalent=0
SURVIVORS=()
t_all=$(date +%s)
for f in "${MUTANTS_LIST[@]}"; do
  name=$(basename "$f" .mut)
  TARGET=$(mut get "$f" file)
  behaviour=$(mut get "$f" behaviour)
  hint=$(mut get "$f" tests)
  [ "${MUTATE_FULL:-0}" = 1 ] && hint=""
  BACKUP=$(mktemp "$BUILD/.mutate-backup.XXXXXX")
  cp -p "$TARGET" "$BACKUP"
  t0=$(date +%s)
  if ! mut apply "$f"; then restore; exit 2; fi
  if ! build "$LOG/$name.build.log"; then
    restore
    broken=$((broken + 1))
    printf '%-34s BROKEN   (does not compile: %s)\n' "$name" "$LOG/$name.build.log"
    continue
  fi
  failed=$(run_tests "$hint" "$LOG/$name.test.log")
  restore
  dt=$(( $(date +%s) - t0 ))
  if [ "$failed" = "NO-TESTS-MATCHED " ] || [ "$failed" = "NO-TESTS-MATCHED" ]; then
    echo "mutate: $f: its tests: hint '$hint' matches no test" >&2
    exit 2
  fi
  equiv=$(mut get "$f" equivalent)
  if [ -n "$failed" ]; then
    caught=$((caught + 1))
    printf '%-34s caught   by %s(%ss)\n' "$name" "$failed" "$dt"
  elif [ -n "$equiv" ]; then
    equivalent=$((equivalent + 1))
    printf '%-34s equivalent (survived, as its file explains: %s; %ss)\n' "$name" "$equiv" "$dt"
  else
    survived=$((survived + 1))
    SURVIVORS+=("$name: $behaviour")
    printf '%-34s SURVIVED (%s; tests: %s; %ss)\n' "$name" "$behaviour" "${hint:-all}" "$dt"
  fi
done
trap - EXIT
# Leave the build dir with the unmutated code, so a later run starts from a clean state.
build "$LOG/final-build.log" >/dev/null 2>&1 || true

total=$((caught + survived))
echo
echo "mutation score: $caught of $total caught ($(( total ? caught * 100 / total : 0 ))%)," \
     "$survived survived, $equivalent equivalent (not counted), $broken did not compile; $(( $(date +%s) - t_all )) s"
for s in "${SURVIVORS[@]}"; do echo "  survived: $s"; done
[ $broken -eq 0 ] || exit 2
[ $total -gt 0 ] && [ $((caught * 100)) -ge $((total * 90)) ]
