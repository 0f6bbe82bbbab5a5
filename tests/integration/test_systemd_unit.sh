#!/bin/sh
# test_systemd_unit.sh - checks deploy/systemd/titan-worker.service (systemd-analyze verify, directives, exposure) and deploy/titan/worker.conf; TAP.
# Usage: test_systemd_unit.sh PATH/TO/titan-worker
set -u

worker=$(realpath "${1:?usage: test_systemd_unit.sh PATH/TO/titan-worker}")
root=$(cd "$(dirname "$0")/../.." && pwd)
unit="$root/deploy/systemd/titan-worker.service"
conf="$root/deploy/titan/worker.conf"
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

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "1..1"
    echo "not ok 1 - systemd-analyze is not installed (make test installs systemd)"
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# verify needs ExecStart's binary to exist: point a copy of the unit at the built worker.
sed "s#^ExecStart=/usr/local/bin/titan-worker #ExecStart=$worker #" "$unit" >"$tmp/titan-worker.service"
grep -q "^ExecStart=$worker --config /etc/titan/worker.conf\$" "$tmp/titan-worker.service"
ok $? "the copy's ExecStart points at the built worker"
out=$(systemd-analyze verify "$tmp/titan-worker.service" 2>&1)
rc=$?
# Warnings about the unit (unknown keys, bad values) leave rc at 0 but name the file.
echo "$out" | grep -q "titan-worker.service" && rc=1
ok $rc "systemd-analyze verify passes with no warnings about the unit" "$out"

for d in 'Type=notify' 'NotifyAccess=main' \
    'ExecStart=/usr/local/bin/titan-worker --config /etc/titan/worker.conf' \
    'WatchdogSec=30' 'Restart=on-failure' 'RestartSec=2' 'KillSignal=SIGTERM' \
    'User=titan' 'Group=titan' 'UMask=0077' 'RuntimeDirectory=titan' \
    'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' \
    'PrivateDevices=no' 'DevicePolicy=closed' \
    'DeviceAllow=/dev/nvidia0 rw' 'DeviceAllow=/dev/nvidiactl rw' \
    'DeviceAllow=/dev/nvidia-uvm rw' 'DeviceAllow=/dev/nvidia-uvm-tools rw' \
    'ProtectKernelTunables=yes' 'ProtectKernelModules=yes' 'ProtectKernelLogs=yes' \
    'ProtectControlGroups=yes' 'ProtectClock=yes' 'ProtectHostname=yes' \
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'RestrictNamespaces=yes' \
    'RestrictRealtime=yes' 'RestrictSUIDSGID=yes' 'LockPersonality=yes' \
    'MemoryDenyWriteExecute=yes' 'SystemCallArchitectures=native' \
    'SystemCallFilter=@system-service' 'CapabilityBoundingSet=' 'AmbientCapabilities='; do
    grep -qxF "$d" "$unit"
    ok $? "the unit has $d"
done

# The drain must end before systemd's stop timeout sends SIGKILL.
stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$unit")
drain_ms=$(sed -n 's/^drain-timeout *= *\([0-9]*\).*/\1/p' "$conf")
[ -n "$stop_s" ] && [ "${drain_ms:-30000}" -lt $((stop_s * 1000)) ]
ok $? "TimeoutStopSec (${stop_s:-unset} s) exceeds worker.conf's drain-timeout (${drain_ms:-30000} ms)"

# Exposure score (0 best, 10 worst); --offline needs no running systemd.
sec=$(systemd-analyze security --offline=true "$tmp/titan-worker.service" 2>&1)
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for titan-worker.service: \([0-9.]*\).*/\1/p')
echo "# systemd-analyze security --offline=true: ${score:-?}"
[ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'
ok $? "exposure level ${score:-?} is at most 2.0" "$sec"

# The example config is accepted by the worker: every key in it is known and every value valid.
"$worker" --config "$conf" --bind 'tcp://127.0.0.1:*' --endpoint-file "$tmp/ep" --device cpu \
    >"$tmp/log" 2>&1 &
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
ok $? "the worker starts with deploy/titan/worker.conf and stops with status 0" "rc=$rc; $(cat "$tmp/log")"

echo "1..$n"
[ $failed -eq 0 ]
