#!/bin/sh
# Installs the Debian 12 packages popcast builds, runs and tests with.
# Idempotent: does nothing when everything is already installed.
set -eu

PACKAGES="build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
  libuv1-dev libnng-dev liblmdb-dev libsodium-dev libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev
  libhttp-parser-dev
  liblua5.4-dev libjansson-dev libraft-dev libmicrohttpd-dev libcmocka-dev
  wrk curl ca-certificates iproute2 valgrind openssl gdb systemd file zsh"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "popcast: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
