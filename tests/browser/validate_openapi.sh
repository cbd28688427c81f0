#!/bin/sh
# Checks docs/openapi.yaml and docs/openapi-agent.yaml with a real
# validator: swagger-cli (npm, pinned in package-lock.json; tests/run.sh
# runs npm ci here). Run by ctest as test_openapi_valid.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cli="$here/node_modules/.bin/swagger-cli"
if [ ! -x "$cli" ]; then
    echo "$cli is missing: run npm ci in tests/browser (tests/run.sh does)" >&2
    exit 1
fi
for doc in openapi.yaml openapi-agent.yaml; do
    "$cli" validate "$here/../../docs/$doc"
done
