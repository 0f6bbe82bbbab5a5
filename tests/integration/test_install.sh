#!/usr/bin/env bash
# test_install.sh - libtitan as a user gets it: installed headers, pkg-config, and only titan_ symbols exported.
# Usage: test_install.sh BUILD_DIR   (prints TAP)
set -u
build=$(cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
check() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }

lib=$(ls "$build"/libtitan.so.* 2>/dev/null | head -n1)
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^titan_' | grep -v '^_' || true)
[ -n "$lib" ] && [ -z "$bad" ]; check $? "libtitan.so exports only titan_ symbols${bad:+ (also: $bad)}"
nm -D --defined-only "$lib" | grep -q ' T titan_client_matmul$'; check $? "titan_client_matmul is exported"
! nm -D --defined-only "$lib" | grep -q ' T titan_json_split_object$'; check $? "internal codec symbols stay hidden"

DESTDIR="$tmp/root" meson install -C "$build" --no-rebuild --quiet >/dev/null 2>&1; check $? "meson install"
pcdir=$(dirname "$(find "$tmp/root" -name titan.pc | head -n1)")
prefix=$(grep '^prefix=' "$pcdir/titan.pc" | cut -d= -f2)
cat > "$tmp/user.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <titan/titan.h>
int main(void)
{
    titan_client_opts o;
    titan_client_opts_init(&o);
    titan_client *c = titan_client_new("tcp://127.0.0.1:1", &o);
    int ok = c != NULL && o.timeout_ms > 0 && strcmp(titan_dtype_name(TITAN_DTYPE_FLOAT32), "float32") == 0;
    titan_client_destroy(&c);
    printf("%s\n", ok ? "fine" : "broken");
    return ok ? 0 : 1;
}
C
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$tmp/root$prefix" --cflags --libs titan)
check $? "pkg-config --cflags --libs titan"
# shellcheck disable=SC2086
gcc -Wall -Werror "$tmp/user.c" -o "$tmp/user" $flags; check $? "a program builds against the installed headers"
libdir=$(dirname "$(find "$tmp/root" -name 'libtitan.so' | head -n1)")
[ "$(LD_LIBRARY_PATH="$libdir" "$tmp/user")" = fine ]; check $? "and runs against the installed library"
echo "1..$n"
[ $failed = 0 ]
