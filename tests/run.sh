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

# The dashboard's browser test (tests/integration/test_dashboard.c) drives
# Debian's chromium with puppeteer-core from npm, and the Connect interop
# test generates its client code with Debian's protoc and protoc-gen-es:
# the npm packages are pinned by tests/browser/package-lock.json and
# installed there (nothing global). Node.js comes from Debian when the
# machine has none.
browser_packages="chromium protobuf-compiler"
command -v node >/dev/null 2>&1 || browser_packages="$browser_packages nodejs"
command -v npm >/dev/null 2>&1 || browser_packages="$browser_packages npm"
missing=""
for p in $browser_packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "== installing for the browser test:$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
echo "== npm ci (tests/browser: puppeteer-core, Connect clients, swagger-cli)"
if ! (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error); then
    # Only when the npm registry cannot be reached from here: the tests
    # that need its packages say SKIPPED, loudly, and the run ends with a
    # note saying which did not run. Without this variable a missing
    # package fails those tests.
    echo "!! npm ci failed: the npm registry is not reachable from here?" >&2
    POPCAST_NPM_UNAVAILABLE=1
    export POPCAST_NPM_UNAVAILABLE
fi

# promtool checks the daemons' /metrics (test_metrics_exposition). It is
# unpacked from Debian's prometheus package into the build tree: nothing
# is installed system-wide, and no Prometheus service starts.
PROMTOOL_DIR="$BUILD_ROOT/tools/prometheus"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
    echo "== unpacking promtool (Debian package prometheus)"
    mkdir -p "$BUILD_ROOT/tools"
    (
        cd "$BUILD_ROOT/tools"
        rm -f prometheus_*.deb
        apt-get download prometheus >/dev/null 2>&1 || {
            SUDO=""
            [ "$(id -u)" -ne 0 ] && SUDO="sudo"
            $SUDO apt-get update -qq
            apt-get download prometheus >/dev/null
        }
        dpkg-deb -x prometheus_*.deb "$PROMTOOL_DIR"
        rm -f prometheus_*.deb
    )
fi
if [ -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
    PATH="$PROMTOOL_DIR/usr/bin:$PATH"
    export PATH
fi

echo "== clang-format check"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build/*')
clang-format --dry-run --Werror $files

run_suite() {
    name=$1
    shift
    echo "== build ($name)"
    cmake -S "$ROOT" -B "$BUILD_ROOT/$name" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
        -DPOPCAST_WERROR=ON "$@" >/dev/null
    cmake --build "$BUILD_ROOT/$name" -j "$JOBS"
    echo "== test ($name)"
    # Each test removes the directories it made when it ends; what a
    # crashed test left in an earlier run goes here.
    rm -rf "$BUILD_ROOT/$name/test-tmp"
    (cd "$BUILD_ROOT/$name" && ctest --output-on-failure -j "$JOBS" --timeout 900)
}

run_suite release
echo "== benchmark smoke run (tiny sizes; figures are not checked)"
./bench/run.sh "$BUILD_ROOT/release" bench_rollout 2 3 20
./bench/run.sh "$BUILD_ROOT/release" bench_edge 3 1 4
./bench/run.sh "$BUILD_ROOT/release" bench_cluster 20 2
./bench/run.sh "$BUILD_ROOT/release" bench_writes 1 1,8 3
./bench/run.sh "$BUILD_ROOT/release" bench_tenants 100
./bench/run.sh "$BUILD_ROOT/release" bench_deployments 2 1 100
./bench/run.sh "$BUILD_ROOT/release" bench_watch 5 5
if [ "${POPCAST_SKIP_SANITIZE:-0}" != 1 ]; then
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        run_suite sanitize -DPOPCAST_SANITIZE=ON
fi
if [ "${POPCAST_SKIP_FUZZ:-0}" != 1 ]; then
    # libFuzzer targets (clang), each for a short time on a scratch copy of
    # its committed corpus: a crash fails the run. docs/security.md has the
    # longer run.
    echo "== fuzz (libFuzzer, ${FUZZ_SECONDS:-10} s per target)"
    CC=clang cmake -S "$ROOT" -B "$BUILD_ROOT/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPOPCAST_WERROR=ON -DPOPCAST_FUZZ=ON >/dev/null
    # Everything, not only the fuzz targets: clang's warnings (-Werror) then
    # cover the whole tree, tests included, as gcc's do above.
    cmake --build "$BUILD_ROOT/fuzz" -j "$JOBS"
    for target in fuzz_publication fuzz_sync_call fuzz_bundle fuzz_config fuzz_api_bodies \
        fuzz_lua_pattern; do
        work="$BUILD_ROOT/fuzz/work/$target"
        rm -rf "$work"
        mkdir -p "$work"
        "$BUILD_ROOT/fuzz/fuzz/$target" -max_total_time="${FUZZ_SECONDS:-10}" -timeout=10 \
            -print_final_stats=1 -artifact_prefix="$work/" "$work" "$ROOT/fuzz/corpus/$target" \
            >"$work.log" 2>&1 || { tail -50 "$work.log"; echo "fuzz target $target failed"; exit 1; }
        echo "$target: $(grep -E 'stat::number_of_executed_units' "$work.log")"
    done
fi
if [ -f "$BUILD_ROOT/release/test-artifacts/dashboard.png" ]; then
    echo "dashboard screenshot (test_dashboard): $BUILD_ROOT/release/test-artifacts/dashboard.png"
fi
if [ "${POPCAST_NPM_UNAVAILABLE:-0}" = 1 ]; then
    echo "!! NOT RUN (npm registry unreachable): the dashboard's browser test, the Connect" >&2
    echo "!! interop test and the OpenAPI validation (test_dashboard, test_connect," >&2
    echo "!! test_openapi_valid report them as skipped)" >&2
fi
echo "== all tests passed"
