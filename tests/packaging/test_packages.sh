#!/bin/sh
# test_packages.sh BUILD_DIR VERSION - the Debian packages cpack builds
# (docs/operations.md "Installing"): five packages, each daemon's with its
# binary, its unit (whose ExecStart names that binary) and its example
# configuration, library dependencies found by dpkg-shlibdeps, and
# binaries that run from the unpacked package.
set -eu
build=$1
version=$2
tmp=$(mktemp -d "${POPCAST_TEST_TMP:-/tmp}/packages-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

(cd "$tmp" && cpack --config "$build/CPackConfig.cmake" -B "$tmp/out") >"$tmp/cpack.log" 2>&1 ||
    { cat "$tmp/cpack.log"; fail "cpack"; }
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
for p in controller agent relay cli; do
    deb="$tmp/out/popcast-${p}_${version}_amd64.deb"
    [ -f "$deb" ] || fail "no package popcast-$p"
    depends=$(dpkg-deb -f "$deb" Depends)
    case "$depends" in
    *libc6*) ;;
    *) fail "popcast-$p has no library dependencies: '$depends'" ;;
    esac
    dpkg-deb -x "$deb" "$tmp/$p"
done
[ -f "$tmp/out/popcast-doc_${version}_all.deb" ] || fail "no package popcast-doc"
for d in controller agent relay; do
    root="$tmp/$d$prefix"
    bin="$root/bin/popcast-$d"
    unit="$root/lib/systemd/system/popcast-$d.service"
    [ -x "$bin" ] || fail "popcast-$d has no binary"
    [ -f "$unit" ] || fail "popcast-$d has no unit"
    [ -f "$root/share/doc/popcast/examples/config/$d.json" ] || fail "popcast-$d has no example"
    grep -q "^ExecStart=$prefix/bin/popcast-$d " "$unit" || fail "popcast-$d's unit runs another binary"
    [ "$("$bin" --version)" = "popcast-$d $version" ] || fail "popcast-$d --version"
    case "$(dpkg-deb -f "$tmp/out/popcast-${d}_${version}_amd64.deb" Depends)" in
    *libnng1*) ;;
    *) fail "popcast-$d does not depend on libnng1" ;;
    esac
done
# The agent's package holds the agent alone.
[ ! -e "$tmp/agent$prefix/bin/popcast-controller" ] || fail "popcast-agent ships the controller"
[ "$("$tmp/cli$prefix/bin/popcast" --version)" = "popcast $version" ] || fail "popcast --version"
[ -f "$tmp/cli$prefix/share/bash-completion/completions/popcast" ] &&
    [ -f "$tmp/cli$prefix/share/zsh/vendor-completions/_popcast" ] ||
    fail "popcast-cli has no shell completion"
ls "$tmp/out"/*.deb | sed 's|.*/||'
echo "packages: ok"
