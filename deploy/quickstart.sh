#!/bin/bash
# popcast quickstart: installs, builds, starts a local controller and three
# agents on loopback, deploys examples/hello, shows every agent serving it,
# deploys a second version and shows it served everywhere. Each deploy is a
# staged deployment with the default plan (canary PoP, 10 %, 50 %,
# everyone), its bakes shortened to 1 s for the demo. The fleet then
# keeps running until Ctrl-C (or exits at once with QUICKSTART_EXIT=1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-$ROOT/build/release}
RUN=${RUN:-$ROOT/build/quickstart}
API_PORT=${API_PORT:-7070}
PUB_PORT=${PUB_PORT:-7071}
SYNC_PORT=${SYNC_PORT:-7072}
POPS=(fra ams nyc)
EDGE_PORTS=(8081 8082 8083)
ADMIN_PORTS=(9091 9092 9093)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing dependencies (Debian packages)"
./deploy/install-deps.sh

step "building popcast"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target popcast-controller popcast-agent popcast >/dev/null
POPCAST="$BUILD/cli/popcast"

for port in "$API_PORT" "$PUB_PORT" "${EDGE_PORTS[@]}" "${ADMIN_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use (another quickstart running?); stop it first" >&2
        exit 1
    fi
done

rm -rf "$RUN"
mkdir -p "$RUN"
PIDS=()
cleanup() {
    if [ ${#PIDS[@]} -gt 0 ]; then
        echo
        echo "stopping the fleet"
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing answers on $1; see the logs in $RUN" >&2
    exit 1
}

step "generating the signing key"
"$POPCAST" keygen --out "$RUN" --name signing

step "starting the controller (API http://127.0.0.1:$API_PORT)"
# Loopback only, so plaintext is allowed explicitly (docs/security.md: TLS).
"$BUILD/controller/popcast-controller" --data-dir "$RUN/controller" --allow-plaintext \
    --api-listen "http://127.0.0.1:$API_PORT" --pub-listen "tcp://127.0.0.1:$PUB_PORT" \
    --sync-listen "tcp://127.0.0.1:$SYNC_PORT" \
    --signing-key "$RUN/signing.key" --node-id controller-1 \
    --deploy-bake-ms 1000 --deploy-interval-ms 200 \
    --pop-locations fra=50.11,8.68 --pop-locations ams=52.37,4.90 --pop-locations nyc=40.71,-74.01 \
    >"$RUN/controller.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$API_PORT/v1/health"
export POPCAST_CONTROLLER="http://127.0.0.1:$API_PORT"
export POPCAST_TOKEN_FILE="$RUN/controller/admin.token"

for i in 0 1 2; do
    pop=${POPS[$i]}
    "$BUILD/agent/popcast-agent" --data-dir "$RUN/agent-$pop" --agent-id "edge-$pop-1" --allow-plaintext \
        --pop "$pop" --subscribe "tcp://127.0.0.1:$PUB_PORT" --sync "tcp://127.0.0.1:$SYNC_PORT" \
        --trusted-key "$RUN/signing.pub" \
        --edge-listen "127.0.0.1:${EDGE_PORTS[$i]}" \
        --admin-listen "http://127.0.0.1:${ADMIN_PORTS[$i]}" \
        >"$RUN/agent-$pop.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do
    wait_http "http://127.0.0.1:${ADMIN_PORTS[$i]}/v1/health"
    echo "agent edge-${POPS[$i]}-1 up: edge 127.0.0.1:${EDGE_PORTS[$i]}, admin 127.0.0.1:${ADMIN_PORTS[$i]}"
done

# Polls every agent until it serves tenant hello at version $1, then shows it.
show_everywhere() {
    local want=$1
    for i in 0 1 2; do
        local url="http://127.0.0.1:${EDGE_PORTS[$i]}/"
        local ok=0
        for _ in $(seq 1 400); do
            local got
            got=$(curl -s -D - -o /dev/null -H "Host: hello.popcast.local" "$url" |
                tr -d '\r' | awk -F': ' 'tolower($1)=="x-popcast-version"{print $2}')
            if [ "$got" = "$want" ]; then ok=1; break; fi
            sleep 0.025
        done
        if [ $ok != 1 ]; then
            echo "edge-${POPS[$i]}-1 does not serve version $want; see $RUN/agent-${POPS[$i]}.log" >&2
            exit 1
        fi
        printf '  edge-%s-1  X-Popcast-Version: %s  body: %s' "${POPS[$i]}" "$want" \
            "$(curl -s -H "Host: hello.popcast.local" "$url")"
        echo
    done
}

step "deploying examples/hello as tenant 'hello' (staged; --wait: until every stage passed)"
"$POPCAST" deploy hello examples/hello --wait --timeout 60
show_everywhere 1

step "deploying a second version (canary PoP ams first, then the rest)"
mkdir -p "$RUN/hello-v2"
sed 's/Hello from popcast/Hello again, version two/' examples/hello/main.lua >"$RUN/hello-v2/main.lua"
"$POPCAST" deploy hello "$RUN/hello-v2" --wait --timeout 60
show_everywhere 2

step "where version 2 is live, per agent (the controller's view, from agent reports)"
"$POPCAST" rollout hello 2

step "the fleet"
"$POPCAST" fleet

step "versions of 'hello'"
"$POPCAST" versions hello

step "the deployments of 'hello'"
"$POPCAST" deployments list hello

if [ "${QUICKSTART_EXIT:-0}" = 1 ]; then
    echo
    echo "quickstart finished (QUICKSTART_EXIT=1): stopping"
    exit 0
fi

cat <<MSG

The fleet is running (logs and data in $RUN):
  controller  API http://127.0.0.1:$API_PORT   admin token in $RUN/controller/admin.token
  dashboard   http://127.0.0.1:$API_PORT/dashboard   (paste the admin token)
  agents      edge 127.0.0.1:${EDGE_PORTS[0]} ${EDGE_PORTS[1]} ${EDGE_PORTS[2]}   status http://127.0.0.1:${ADMIN_PORTS[0]}/v1/status

Try, in another shell:
  export POPCAST_CONTROLLER=$POPCAST_CONTROLLER POPCAST_TOKEN_FILE=$POPCAST_TOKEN_FILE
  curl -H 'Host: hello.popcast.local' http://127.0.0.1:${EDGE_PORTS[0]}/
  $POPCAST deploy mytenant examples/router --wait
  $POPCAST deploy mytenant examples/router --immediate --wait
  $POPCAST deployments show hello 2
  $POPCAST watch --from 0          # every change, then what happens (Ctrl-C to stop)
  $POPCAST tail hello              # its print output, errors and requests, live
  $POPCAST rollback hello 1 --wait
  $POPCAST rollout hello 3
  $POPCAST fleet
  $POPCAST status hello
  curl http://127.0.0.1:${ADMIN_PORTS[0]}/v1/status

Press Ctrl-C to stop the fleet.
MSG
while true; do sleep 3600 & wait $!; done
