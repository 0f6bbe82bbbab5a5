#!/usr/bin/env bash
# make_guest.sh - builds the small Linux guest that test_vm_qemu boots under a real QEMU (TCG without /dev/kvm).
#
# usage: make_guest.sh BUILD KERNEL OUT
#   BUILD   the build directory: titan-worker (run in the guest) and titan (keygen)
#   KERNEL  Debian's cloud kernel unpacked by scripts/deps.sh test (.deps/guest-kernel: vmlinuz, lib/modules/)
#   OUT     an empty directory for what it makes:
#     guest-acpi.raw     a disk holding one FAT file system with \EFI\BOOT\BOOTX64.EFI: a unified kernel image
#                        (systemd-boot's EFI stub + the kernel + the initramfs + the command line), which OVMF
#                        boots as removable media; its guest powers off on the ACPI power button
#     guest-noacpi.raw   the same guest, told to ignore the power button (titan.acpi=off)
#     client, client_secret, worker   the CURVE certificates: the host's client and the guest worker's public one
#     worker.cmd         the worker's command line in the guest (for the test's messages)
#
# The guest: busybox (static), the kernel modules for virtio-net and the ACPI power button, titan-worker with
# every library ldd names (the guest has no other files), deploy/titan/worker.conf, and the command line of
# deploy/guest/titan-worker.service's ExecStart with two changes: the guest's user-mode address 10.0.2.15 for
# 192.168.122.10, and --device cpu for --device cuda (the guest has no GPU). Everything else in that line
# (the config file, CURVE with the client directory, --http) runs as deployed.
set -euo pipefail

say() { echo "make_guest: $*" >&2; }
die() {
    echo "make_guest: error: $*" >&2
    exit 1
}

[ $# -eq 3 ] || die "usage: make_guest.sh BUILD KERNEL OUT"
build=$(cd "$1" && pwd)
kernel=$(cd "$2" && pwd)
out=$3
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
readonly GUEST_IP=10.0.2.15 DEPLOY_IP=192.168.122.10

stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
for t in objcopy readelf mformat mmd mcopy ldd; do
    command -v "$t" >/dev/null || die "$t is missing: run scripts/deps.sh test (mtools, binutils)"
done
[ -f "$stub" ] || die "$stub is missing: run scripts/deps.sh test (systemd-boot-efi)"
busybox=/bin/busybox
if [ ! -f "$busybox" ] || readelf -l "$busybox" 2>/dev/null | grep -q 'program interpreter'; then
    die "$busybox is missing or not static: run scripts/deps.sh test (busybox-static)"
fi
vmlinuz=$(find "$kernel" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || die "no vmlinuz-* in $kernel: run scripts/deps.sh test (it unpacks Debian's cloud kernel there)"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kernel/lib/modules/$kver
[ -d "$moddir" ] || die "no $moddir: run scripts/deps.sh test again"
if [ ! -x "$build/titan-worker" ] || [ ! -x "$build/titan" ]; then
    die "$build has no titan-worker and titan: build first"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
rootfs=$out/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,run,etc/titan/clients,etc/acpi/PWRF,usr/local/bin,lib/modules}

# --- busybox, the worker and its libraries (the paths ldd resolves, and the program interpreter) ---
cp "$busybox" "$rootfs/bin/busybox"
cp "$build/titan-worker" "$rootfs/usr/local/bin/"
copy_lib() { # copies $1 (a path) into the rootfs at the same path, following links
    mkdir -p "$rootfs$(dirname "$1")"
    cp -L "$1" "$rootfs$1"
}
ldd "$build/titan-worker" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | sort -u | while read -r lib; do
    copy_lib "$lib"
done
interp=$(readelf -l "$build/titan-worker" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -n "$interp" ] && copy_lib "$interp"

# --- kernel modules, dependencies first (each module's .modinfo "depends="; the deb carries no modules.dep) ---
depends() { objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n 's/^depends=//p'; }
order=()
declare -A seen=()
add_module() { # $1: module name
    local name=$1 path dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    path=$(find "$moddir/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n 1)
    [ -n "$path" ] || die "module $name is not in $moddir (a built-in one needs no file: check $moddir/modules.builtin)"
    for dep in $(depends "$path" | tr ',' ' '); do add_module "$dep"; done
    cp "$path" "$rootfs/lib/modules/"
    order+=("$(basename "$path")")
}
for m in virtio_pci virtio_net button evdev; do
    if grep -q "/$m.ko$" "$moddir/modules.builtin" 2>/dev/null; then continue; fi
    add_module "$m"
done
printf '%s\n' "${order[@]}" >"$rootfs/etc/modules.order"

# --- the worker's files, as deploy/guest installs them ---
cp "$root_dir/deploy/titan/worker.conf" "$rootfs/etc/titan/worker.conf"
"$build/titan" keygen --out "$out/keys" --name worker --force >/dev/null
"$build/titan" keygen --out "$out/keys" --name client --force >/dev/null
cp "$out/keys/worker_secret" "$rootfs/etc/titan/worker_secret"
cp "$out/keys/client" "$rootfs/etc/titan/clients/client"
cp "$out/keys/worker" "$out/keys/client" "$out/keys/client_secret" "$out/"

unit=$root_dir/deploy/guest/titan-worker.service
cmd=$(sed -n 's/^ExecStart=//p' "$unit")
[ -n "$cmd" ] || die "no ExecStart= in $unit"
case "$cmd" in
*"--device cuda"*) ;;
*) die "$unit's ExecStart has no --device cuda any more: update make_guest.sh's substitution" ;;
esac
case "$cmd" in
*"$DEPLOY_IP"*) ;;
*) die "$unit's ExecStart does not bind $DEPLOY_IP any more: update make_guest.sh's substitution" ;;
esac
cmd=${cmd//--device cuda/--device cpu}
cmd=${cmd//$DEPLOY_IP/$GUEST_IP}
printf '%s\n' "$cmd" >"$rootfs/etc/titan/worker.cmd"
printf '%s\n' "$cmd" >"$out/worker.cmd"

# --- init: busybox as PID 1's shell; the network of QEMU's user mode; the worker; acpid when asked ---
cat >"$rootfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/local/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/titan /var/log
say() { echo "titan-guest: $*" >/dev/console; }
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" || say "insmod $m failed"; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 || say "no eth0"
case " $(cat /proc/cmdline) " in
*" titan.acpi=off "*) say "ignoring the ACPI power button" ;;
*) acpid -c /etc/acpi -l /var/log/acpid.log && say "acpid: the power button powers off" ;;
esac
cmd=$(cat /etc/titan/worker.cmd)
say "starting: $cmd"
$cmd >/dev/console 2>&1 &
echo $! >/run/titan/worker.pid
say "worker pid $!"
while true; do
    wait
    sleep 1
done
EOF
chmod 755 "$rootfs/init"
# busybox acpid runs CONFDIR/PWRF/00000080 on the power button
cat >"$rootfs/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
say() { echo "titan-guest: $*" >/dev/console; }
say "power button: stopping the worker"
pid=$(cat /run/titan/worker.pid)
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
say "powering off"
sync
poweroff -f
EOF
chmod 755 "$rootfs/etc/acpi/PWRF/00000080"

# --- initramfs (uncompressed: under TCG, decompressing costs more than reading), UKIs, disks ---
(cd "$rootfs" && find . | sort | "$busybox" cpio -o -H newc 2>/dev/null) >"$out/initrd.cpio"
printf 'ID=titan-test-guest\nNAME="titan test guest"\n' >"$out/os-release"
make_disk() { # $1: disk file, $2: command line
    local efi=$out/${1%.raw}.efi
    printf '%s' "$2" >"$out/cmdline.txt"
    objcopy \
        --add-section .osrel="$out/os-release" --change-section-vma .osrel=0x20000 \
        --add-section .cmdline="$out/cmdline.txt" --change-section-vma .cmdline=0x30000 \
        --add-section .linux="$vmlinuz" --change-section-vma .linux=0x2000000 \
        --add-section .initrd="$out/initrd.cpio" --change-section-vma .initrd=0x3000000 \
        "$stub" "$efi"
    local mb=$((($(stat -c %s "$efi") / 1048576) + 16))
    rm -f "$out/$1"
    truncate -s "${mb}M" "$out/$1"
    mformat -i "$out/$1" -F -v TITANEFI :: >/dev/null
    mmd -i "$out/$1" ::/EFI ::/EFI/BOOT
    mcopy -i "$out/$1" "$efi" ::/EFI/BOOT/BOOTX64.EFI
    rm -f "$efi"
}
base="console=ttyS0 loglevel=4 panic=0"
make_disk guest-acpi.raw "$base"
make_disk guest-noacpi.raw "$base titan.acpi=off"
rm -f "$out/cmdline.txt" "$out/os-release"
say "guest for kernel $kver: $(du -sh "$out/initrd.cpio" | cut -f1) initramfs, modules: ${order[*]}"
