#!/bin/sh
# install-deps.sh -- install the Debian packages dbatch needs, only those missing.
# Usage: scripts/install-deps.sh [build|test|demo|bench|fuzz]   (default: test)
# Idempotent: when everything is present it calls nothing and prints nothing.
set -eu
what=${1:-test}

build_pkgs="cmake make gcc pkg-config libzmq3-dev libmsgpack-dev libsqlite3-dev libpq-dev libutf8proc-dev zlib1g-dev libzstd-dev libxxhash-dev libmicrohttpd-dev"
test_pkgs="iproute2 postgresql-15 nftables slurm-wlm munge openmpi-bin libcmocka-dev python3 python3-zmq python3-msgpack python3-sklearn python3-prometheus-client chromium sqlite3 gzip zstd procps npm"
demo_pkgs="npm sqlite3"
bench_pkgs="python3-sklearn python3-distributed python3-pandas parallel bc"
# libFuzzer targets: clang, its runtimes (only recommended by clang, so named) and llvm-symbolizer
# for readable stacks. Debian 12's clang is version 14.
fuzz_pkgs="clang libclang-rt-14-dev llvm-14"

case "$what" in
  build) want="$build_pkgs" ;;
  test)  want="$build_pkgs $test_pkgs $fuzz_pkgs" ;;  # CI (.ci/run) also runs make fuzz
  demo)  want="$build_pkgs $demo_pkgs" ;;
  bench) want="$build_pkgs $test_pkgs $bench_pkgs" ;;
  fuzz)  want="$build_pkgs $fuzz_pkgs" ;;
  *) echo "install-deps.sh: unknown set '$what' (build, test, demo, bench, fuzz)" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
# npm from another vendor's nodejs package also counts as present.
case "$missing" in *" npm"*) command -v npm >/dev/null 2>&1 && missing=$(echo "$missing" | sed 's/ npm//') ;; esac
[ -z "$missing" ] && exit 0

echo "dbatch: installing missing Debian packages:$missing" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "dbatch: need root or sudo to install:$missing" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
