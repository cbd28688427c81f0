#!/bin/sh
# Checks docs/openapi.yaml and docs/openapi-agent.yaml with a real
# validator: swagger-cli (npm, pinned in package-lock.json; tests/run.sh
# runs npm ci here). Run by ctest as test_openapi_valid.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cli="$here/node_modules/.bin/swagger-cli"
if [ ! -x "$cli" ]; then
    if [ "${POPCAST_NPM_UNAVAILABLE:-0}" = 1 ]; then
        echo "SKIPPED: the npm registry is unreachable (tests/run.sh), so swagger-cli is not here" >&2
        exit 77
    fi
    echo "$cli is missing: run npm ci in tests/browser (tests/run.sh does)" >&2
    exit 1
fi
for doc in openapi.yaml openapi-agent.yaml; do
    "$cli" validate "$here/../../docs/$doc"
done
