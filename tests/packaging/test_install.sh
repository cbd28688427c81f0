#!/bin/sh
# test_install.sh BUILD_DIR VERSION - what `cmake --install` puts in place
# (docs/operations.md "Installing"): the four binaries (--version), the
# example configurations (each passes its daemon's --check-config), the
# docs, and three systemd units that `systemd-analyze verify` accepts and
# whose `systemd-analyze security` exposure is at most 2.0 ("OK").
set -eu
build=$1
version=$2
tmp=$(mktemp -d "${POPCAST_TEST_TMP:-/tmp}/install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

DESTDIR="$tmp/root" cmake --install "$build" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "cmake --install"; }
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
root="$tmp/root$prefix"
doc="$root/share/doc/popcast"

for bin in popcast-controller popcast-agent popcast-relay popcast; do
    [ -x "$root/bin/$bin" ] || fail "$bin not installed in $root/bin"
    out=$("$root/bin/$bin" --version)
    [ "$out" = "$bin $version" ] || fail "$bin --version said '$out'"
done
# Shell completion, where bash-completion and zsh find vendor scripts.
grep -q 'complete -o default -F _popcast popcast' "$root/share/bash-completion/completions/popcast" ||
    fail "bash completion not installed"
grep -q '^#compdef popcast' "$root/share/zsh/vendor-completions/_popcast" ||
    fail "zsh completion not installed"
for f in operations.md api.md openapi.yaml openapi-agent.yaml security.md; do
    [ -f "$doc/$f" ] || fail "docs/$f not installed"
done
for d in controller agent relay; do
    conf="$doc/examples/config/$d.json"
    [ -f "$conf" ] || fail "example $d.json not installed"
    "$root/bin/popcast-$d" --check-config --config "$conf" >/dev/null ||
        fail "the example $d.json does not load"
done
# A broken configuration is refused, and says where.
echo '{"raft_id": "one"}' >"$tmp/bad.json"
if "$root/bin/popcast-controller" --check-config --config "$tmp/bad.json" 2>"$tmp/bad.err"; then
    fail "--check-config accepted a bad configuration"
fi
grep -q raft_id "$tmp/bad.err" || fail "--check-config did not name the bad key"

units="$root/lib/systemd/system"
mkdir "$tmp/units"
for d in controller agent relay; do
    u="$units/popcast-$d.service"
    [ -f "$u" ] || fail "popcast-$d.service not installed"
    # verify checks that ExecStart's binary exists: point it at this tree.
    sed "s|$prefix/bin/|$root/bin/|" "$u" >"$tmp/units/popcast-$d.service"
done
(cd "$tmp/units" && systemd-analyze verify ./*.service) >"$tmp/verify.log" 2>&1 ||
    { cat "$tmp/verify.log"; fail "systemd-analyze verify"; }
if [ -s "$tmp/verify.log" ]; then
    cat "$tmp/verify.log"
    fail "systemd-analyze verify warned"
fi
for d in controller agent relay; do
    line=$(systemd-analyze security --offline=true "$tmp/units/popcast-$d.service" 2>&1 |
        grep 'Overall exposure level')
    echo "$line"
    score=$(echo "$line" | sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p')
    [ -n "$score" ] || fail "no exposure score for popcast-$d.service"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' ||
        fail "popcast-$d.service exposure $score is above 2.0"
done
echo "install: ok"
