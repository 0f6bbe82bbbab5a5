#!/usr/bin/env bash
# test_configure.sh - scripts/configure.sh finds a dependency installed after the build directory was
# set up (Meson's cached "NO" must not survive), and leaves an unchanged directory alone.
# Usage: test_configure.sh REPO_ROOT
set -u
root=$(cd "${1:?usage: $0 REPO_ROOT}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
fails=0
ok() { # ok COND_STATUS NAME
  n=$((n + 1))
  if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi
}

mkdir -p "$tmp/proj" "$tmp/inc"
cat > "$tmp/proj/meson.build" <<'MESON'
project('probe', 'c')
found = meson.get_compiler('c').has_header('titan_probe.h', args : ['-I' + get_option('incdir')])
message('probe header found: @0@'.format(found))
MESON
echo "option('incdir', type : 'string', value : '')" > "$tmp/proj/meson_options.txt"
export TITAN_CONFIGURE_WATCH="$tmp/dpkg-status"
echo "before" > "$TITAN_CONFIGURE_WATCH"
cd "$tmp/proj" || exit 1

"$root/scripts/configure.sh" b "-Dincdir=$tmp/inc" > "$tmp/out1" 2>&1
grep -q "probe header found: false" "$tmp/out1"
ok $? "a fresh setup without the header: not found"

# The package arrives (deps.sh installs it); the dpkg database changes with it.
echo "#define TITAN_PROBE 1" > "$tmp/inc/titan_probe.h"
meson setup --reconfigure b > "$tmp/out2" 2>&1
grep -q "probe header found: false" "$tmp/out2" && grep -q "(cached)" "$tmp/out2"
ok $? "plain meson --reconfigure keeps the cached NO (the reason configure.sh exists)"

echo "after the install" > "$TITAN_CONFIGURE_WATCH"
"$root/scripts/configure.sh" b > "$tmp/out3" 2>&1
grep -q "probe header found: true" "$tmp/out3" && grep -q "configuring it afresh" "$tmp/out3"
ok $? "configure.sh after the package change: configured afresh, the header is found"
grep -q "incdir.*$tmp/inc\|$tmp/inc" b/meson-info/intro-buildoptions.json
ok $? "the options given before survive the fresh configuration"

"$root/scripts/configure.sh" b > "$tmp/out4" 2>&1
[ ! -s "$tmp/out4" ]
ok $? "nothing changed: configure.sh does nothing and says nothing"

echo "1..$n"
[ "$fails" -eq 0 ]
