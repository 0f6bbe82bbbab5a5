#!/usr/bin/env bash
# test_guest_files.sh - checks deploy/guest/ (guest-setup.sh, titan-worker.service, 10-titan.network) without an Arch guest; TAP.
# Usage: test_guest_files.sh PATH/TO/titan-worker PATH/TO/titan
set -u

worker=$(realpath "${1:?usage: test_guest_files.sh PATH/TO/titan-worker PATH/TO/titan}")
titan=$(realpath "${2:?usage: test_guest_files.sh PATH/TO/titan-worker PATH/TO/titan}")
root=$(cd "$(dirname "$0")/../.." && pwd)
guest=$root/deploy/guest
setup=$guest/guest-setup.sh
unit=$guest/titan-worker.service
hostunit=$root/deploy/systemd/titan-worker.service
net=$guest/10-titan.network
n=0
failed=0

ok() { # ok COND-STATUS NAME [DETAIL]
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        failed=$((failed + 1))
        echo "not ok $n - $2"
        [ -n "${3:-}" ] && printf '%s\n' "$3" | sed 's/^/# /'
    fi
}
missing() { # missing NAME WHY: a tool make test installs is not there: a failure, never a skip
    n=$((n + 1))
    failed=$((failed + 1))
    echo "not ok $n - $1: $2"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---- guest-setup.sh: static checks ----
[ -x "$setup" ]
ok $? "guest-setup.sh is executable"
out=$(bash -n "$setup" 2>&1)
ok $? "bash -n guest-setup.sh" "$out"
grep -qx 'set -euo pipefail' "$setup"
ok $? "guest-setup.sh runs under set -euo pipefail"
if command -v shellcheck >/dev/null 2>&1; then
    out=$(shellcheck -x "$setup" 2>&1)
    ok $? "shellcheck guest-setup.sh: clean" "$out"
else
    missing "shellcheck guest-setup.sh" "shellcheck is not installed (make test installs it)"
fi

# ---- guest-setup.sh: what it does before changing anything ----
out=$("$setup" --help 2>&1)
rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q '^usage: guest-setup.sh' && echo "$out" | grep -q -- '--driver 470|580' &&
    echo "$out" | grep -q 'nvidia-470xx-dkms'
ok $? "--help: usage, exit 0" "rc=$rc; $out"

printf 'NAME="Debian GNU/Linux"\nID=debian\n' >"$tmp/debian"
printf 'NAME="Arch Linux"\nID=arch\n' >"$tmp/arch"
out=$(TITAN_GUEST_OS_RELEASE=$tmp/debian "$setup" 2>&1)
rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q 'for an Arch Linux guest' && echo "$out" | grep -q '"debian"'
ok $? "refuses a non-Arch system (exit 2), naming it" "rc=$rc; $out"
out=$(TITAN_GUEST_OS_RELEASE=$tmp/none "$setup" 2>&1)
rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q '"unknown"'
ok $? "refuses when os-release is missing (exit 2)" "rc=$rc; $out"

# Non-root on Arch: run as nobody when this runs as root.
if [ "$(id -u)" -eq 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        cp "$setup" "$tmp/" && chmod 0755 "$tmp" && mkdir -p "$tmp/deploy/guest" &&
            cp "$unit" "$net" "$tmp/deploy/guest/" && touch "$tmp/meson.build" && chmod -R a+rX "$tmp"
        out=$(TITAN_GUEST_OS_RELEASE=$tmp/arch setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$tmp/guest-setup.sh" --src "$tmp" 2>&1)
        rc=$?
        [ $rc -eq 2 ] && echo "$out" | grep -q 'run it as root'
        ok $? "refuses to run as anyone but root (exit 2)" "rc=$rc; $out"
    else
        missing "refuses to run as anyone but root" "setpriv (util-linux) is missing"
    fi
else
    out=$(TITAN_GUEST_OS_RELEASE=$tmp/arch "$setup" 2>&1)
    rc=$?
    [ $rc -eq 2 ] && echo "$out" | grep -q 'run it as root'
    ok $? "refuses to run as anyone but root (exit 2)" "rc=$rc; $out"
fi

for args in "--driver 390" "--address 192.168.122.10" "--address 300.1.1.1/24" "--gateway x" \
    "--dns 1.2.3" "--bogus" "--driver" "--client-key /nonexistent" "--cuda-runfile /nonexistent"; do
    # shellcheck disable=SC2086 # each case is several words on purpose
    out=$(TITAN_GUEST_OS_RELEASE=$tmp/arch "$setup" $args 2>&1)
    rc=$?
    [ $rc -eq 2 ] && echo "$out" | grep -q -- '--help'
    ok $? "usage error: $args (exit 2, before the system checks)" "rc=$rc; $out"
done
touch "$tmp/alice_secret"
out=$(TITAN_GUEST_OS_RELEASE=$tmp/arch "$setup" --client-key "$tmp/alice_secret" 2>&1)
rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q 'secret certificate'
ok $? "--client-key refuses a _secret certificate" "rc=$rc; $out"

# ---- 10-titan.network ----
for d in '[Match]' 'Name=en*' '[Network]' 'Address=192.168.122.10/24' 'Gateway=192.168.122.1' \
    'DNS=192.168.122.1'; do
    grep -qxF "$d" "$net"
    ok $? "10-titan.network has $d"
done
# The substitution guest-setup.sh makes.
sed -e "s|^Address=.*|Address=10.1.2.3/16|" -e "s|^Gateway=.*|Gateway=10.1.0.1|" -e "s|^DNS=.*|DNS=10.1.0.53|" \
    "$net" >"$tmp/10-titan.network"
[ "$(grep -c '^Address=10.1.2.3/16$\|^Gateway=10.1.0.1$\|^DNS=10.1.0.53$' "$tmp/10-titan.network")" -eq 3 ]
ok $? "guest-setup.sh's rewrite of Address/Gateway/DNS applies to each line once"

# ---- titan-worker.service (guest) ----
exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
for a in '--config /etc/titan/worker.conf' '--device cuda' '--bind tcp://192.168.122.10:5555' \
    '--curve-secret /etc/titan/worker_secret' '--allow-keys /etc/titan/clients' '--http 192.168.122.10:9100'; do
    case " $exec_line " in
    *" $a "*) ok 0 "the guest unit runs the worker with $a" ;;
    *) ok 1 "the guest unit runs the worker with $a" "$exec_line" ;;
    esac
done
# Same sandbox and service settings as the host's unit: only the description, ordering and command differ.
strip() { grep -v '^#' "$1" | grep -v '^$' | grep -v '^ExecStart=\|^Description=\|^After=' | sort; }
out=$(diff <(strip "$hostunit") <(strip "$unit"))
ok $? "every other directive matches deploy/systemd/titan-worker.service" "$out"

# The options are real: the worker starts with the unit's command line, on loopback, CPU and a throwaway key.
"$titan" keygen --out "$tmp/keys" --name worker >/dev/null 2>&1 && mkdir -p "$tmp/keys/clients"
args=$(echo "$exec_line" | sed -e "s#^/usr/local/bin/titan-worker ##" \
    -e "s#/etc/titan/worker.conf#$root/deploy/titan/worker.conf#" -e 's#--device cuda#--device cpu#' \
    -e "s#tcp://192.168.122.10:5555#tcp://127.0.0.1:*#" -e 's#192.168.122.10:9100#127.0.0.1:0#' \
    -e "s#/etc/titan/worker_secret#$tmp/keys/worker_secret#" -e "s#/etc/titan/clients#$tmp/keys/clients#")
# shellcheck disable=SC2086 # the unit's arguments, split as systemd splits them (no quotes in them)
"$worker" $args --endpoint-file "$tmp/ep" --log-level warn >"$tmp/log" 2>&1 &
pid=$!
i=0
while [ ! -s "$tmp/ep" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do
    sleep 0.1
    i=$((i + 1))
done
started=1
[ -s "$tmp/ep" ] && started=0
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
[ $started -eq 0 ] && [ $rc -eq 0 ]
ok $? "the worker accepts the unit's options (cuda, address and keys swapped for local ones)" \
    "rc=$rc; args=$args; $(cat "$tmp/log")"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    missing "systemd-analyze verify of the guest unit" "systemd-analyze is not installed (make test installs systemd)"
else
    # verify needs ExecStart's binary to exist: point copies at the built worker.
    sed "s#^ExecStart=/usr/local/bin/titan-worker #ExecStart=$worker #" "$unit" >"$tmp/titan-worker.service"
    out=$(systemd-analyze verify "$tmp/titan-worker.service" 2>&1)
    rc=$?
    echo "$out" | grep -q "titan-worker.service" && rc=1
    ok $rc "systemd-analyze verify passes with no warnings about the guest unit" "$out"
    mkdir -p "$tmp/other"
    sed -e "s|192\.168\.122\.10|10.0.0.5|g" -e "s#^ExecStart=/usr/local/bin/titan-worker #ExecStart=$worker #" \
        "$unit" >"$tmp/other/titan-worker.service"
    out=$(systemd-analyze verify "$tmp/other/titan-worker.service" 2>&1)
    rc=$?
    echo "$out" | grep -q "titan-worker.service" && rc=1
    grep -q -- '--bind tcp://10.0.0.5:5555 .*--http 10.0.0.5:9100' "$tmp/other/titan-worker.service" || rc=1
    ok $rc "the unit guest-setup.sh writes for another --address verifies too" "$out"
    sec=$(systemd-analyze security --offline=true "$tmp/titan-worker.service" 2>&1)
    score=$(echo "$sec" | sed -n 's/.*Overall exposure level for titan-worker.service: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'
    ok $? "exposure level ${score:-?} of the guest unit is at most 2.0" "$sec"
fi

echo "1..$n"
[ $failed -eq 0 ]
