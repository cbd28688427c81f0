#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine:
#   installs dependencies, checks formatting, builds with -Werror and runs
#   every test (ctest), then does the same with ASan+UBSan.
# Build trees: build/release and build/sanitize (override: BUILD_ROOT).
# Set POPCAST_SKIP_SANITIZE=1 for a quicker local run.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_ROOT=${BUILD_ROOT:-$ROOT/build}
JOBS=${JOBS:-$(nproc)}

./deploy/install-deps.sh

echo "== clang-format check"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build/*')
clang-format --dry-run --Werror $files

run_suite() {
    name=$1
    shift
    echo "== build ($name)"
    cmake -S "$ROOT" -B "$BUILD_ROOT/$name" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPOPCAST_WERROR=ON "$@" >/dev/null
    cmake --build "$BUILD_ROOT/$name" -j "$JOBS"
    echo "== test ($name)"
    (cd "$BUILD_ROOT/$name" && ctest --output-on-failure -j "$JOBS" --timeout 900)
}

run_suite release
echo "== benchmark smoke run (tiny sizes; figures are not checked)"
./bench/run.sh "$BUILD_ROOT/release" bench_rollout 2 3 20
./bench/run.sh "$BUILD_ROOT/release" bench_edge 3 1 4
./bench/run.sh "$BUILD_ROOT/release" bench_cluster 20 2
if [ "${POPCAST_SKIP_SANITIZE:-0}" != 1 ]; then
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        run_suite sanitize -DPOPCAST_SANITIZE=ON
fi
echo "== all tests passed"
