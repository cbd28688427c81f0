#!/bin/sh
# Runs a benchmark against the daemons of a build tree:
#   bench/run.sh [BUILD_DIR] BENCH [ARGS...]
#   bench/run.sh build/release bench_rollout 3,20 9 200
#   bench/run.sh build/release bench_lua_metering 15 20000
# (BENCH: bench_rollout, bench_edge, bench_cluster, bench_writes, bench_tenants,
# bench_deployments, bench_watch,
# bench_lua_metering;
# the README's "Benchmarks" section says what each measures)
# The build must be a release one (no sanitizers) for meaningful figures.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build/release}
shift || true
BENCH=${1:-bench_rollout}
shift || true
BUILD=$(cd "$BUILD" && pwd)
export POPCAST_CONTROLLER_BIN="$BUILD/controller/popcast-controller"
export POPCAST_AGENT_BIN="$BUILD/agent/popcast-agent"
export POPCAST_RELAY_BIN="$BUILD/relay/popcast-relay"
export POPCAST_WAN_LINK_BIN="$BUILD/tests/pc_wan_link"
export POPCAST_CLI_BIN="$BUILD/cli/popcast"
export POPCAST_SOURCE_DIR="$ROOT"
export POPCAST_TEST_TMP="$BUILD/bench-tmp"
mkdir -p "$POPCAST_TEST_TMP"
exec "$BUILD/bench/$BENCH" "$@"
