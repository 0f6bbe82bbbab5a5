#!/usr/bin/env bash
# guest-setup.sh - provisions an Arch Linux guest as the titan GPU VM: NVIDIA driver, CUDA, titan, network, unit.
#
# Design phase 3 (docs/OPERATIONS.md, "From bare host to running service"). Run it as root inside the guest,
# from a titan source tree (git clone, or copied in), after the GPU was passed through (phases 1 and 2).
# Running it again is safe: installed packages, built drivers, existing keys and config are kept.
set -euo pipefail

readonly SELF=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

driver=470
address=192.168.122.10/24
gateway=192.168.122.1
dns=
src=$(cd "$SCRIPT_DIR/../.." && pwd)
cuda_runfile=
build_user=titan-build
skip_driver=0
client_keys=()

usage() {
    cat <<EOF
usage: $SELF [--driver 470|580] [--address IP/PREFIX] [--gateway IP] [--dns IP]
                      [--src DIR] [--cuda-runfile FILE] [--client-key FILE]... [--skip-driver]

Provisions this Arch Linux guest as the titan GPU VM, as root:
  1. packages: base-devel, git, meson, the kernel headers and titan's build dependencies
  2. nouveau blacklisted (/etc/modprobe.d/blacklist-nouveau.conf), initramfs rebuilt
  3. the NVIDIA driver from the AUR, built by an unprivileged user ($build_user) with makepkg:
       --driver 470  nvidia-470xx-dkms + nvidia-470xx-utils (CUDA up to 11.4)
       --driver 580  nvidia-580xx-dkms + nvidia-580xx-utils (CUDA up to 12.9; 13 drops Maxwell)
  4. CUDA: --cuda-runfile FILE installs NVIDIA's runfile toolkit (cuda_11.4.x_*.run for 470,
     cuda_12.x_*.run for 580) in /opt/cuda-VERSION; without it, 580 gets pacman's cuda (check
     that its version still builds sm_52), 470 gets none (a note says what to do)
  5. titan built and installed in /usr/local (meson), user and group titan
  6. /etc/titan: worker.conf, the worker's CURVE key pair (titan keygen), clients/ with --client-key
  7. /etc/systemd/network/10-titan.network with --address/--gateway/--dns; systemd-networkd on
  8. /etc/systemd/system/titan-worker.service bound to --address; enabled
Reboot afterwards (nouveau out, the nvidia module in), then check from the host:
  titan --endpoint tcp://ADDRESS:5555 --server-key worker --curve-secret HOST_secret ping

options:
  --driver 470|580     the NVIDIA branch (default $driver)
  --address IP/PREFIX  the guest's static address (default $address)
  --gateway IP         the host's address on the host-only network (default $gateway)
  --dns IP             the resolver (default: the gateway)
  --src DIR            the titan source tree (default: the one holding this script, $src)
  --cuda-runfile FILE  install this CUDA runfile's toolkit
  --client-key FILE    a client's public certificate (titan keygen on the host) to admit;
                       repeatable; copied into /etc/titan/clients
  --skip-driver        leave the driver and CUDA as they are (re-provision titan only)
  -h, --help           print this help and exit

It refuses to run on anything but Arch Linux, and as anyone but root.
exit status: 0 done; 1 a step failed; 2 usage error or wrong system.
EOF
}

say() { printf '%s: %s\n' "$SELF" "$*"; }
die() {
    printf '%s: %s\n' "$SELF" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s; see %s --help\n' "$SELF" "$*" "$SELF" >&2
    exit 2
}

# An IPv4 address, optionally with /PREFIX when $2 is "prefix".
valid_ipv4() {
    local ip=$1 want_prefix=${2:-} octet prefix
    if [[ $want_prefix == prefix ]]; then
        [[ $ip == */* ]] || return 1
        prefix=${ip#*/}
        ip=${ip%/*}
        [[ $prefix =~ ^[0-9]{1,2}$ ]] && ((prefix >= 8 && prefix <= 30)) || return 1
    fi
    [[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
    local IFS=.
    for octet in $ip; do
        ((10#$octet <= 255)) || return 1
    done
}

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }

while (($#)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --driver)
        need_value "$@"
        driver=$2
        shift
        ;;
    --address)
        need_value "$@"
        address=$2
        shift
        ;;
    --gateway)
        need_value "$@"
        gateway=$2
        shift
        ;;
    --dns)
        need_value "$@"
        dns=$2
        shift
        ;;
    --src)
        need_value "$@"
        src=$2
        shift
        ;;
    --cuda-runfile)
        need_value "$@"
        cuda_runfile=$2
        shift
        ;;
    --client-key)
        need_value "$@"
        client_keys+=("$2")
        shift
        ;;
    --skip-driver) skip_driver=1 ;;
    *) usage_error "unknown argument \"$1\"" ;;
    esac
    shift
done
dns=${dns:-$gateway}

[[ $driver == 470 || $driver == 580 ]] || usage_error "--driver is 470 or 580, not \"$driver\""
valid_ipv4 "$address" prefix || usage_error "--address wants IP/PREFIX such as 192.168.122.10/24, not \"$address\""
valid_ipv4 "$gateway" || usage_error "--gateway wants an IPv4 address, not \"$gateway\""
valid_ipv4 "$dns" || usage_error "--dns wants an IPv4 address, not \"$dns\""
[[ -z $cuda_runfile || -f $cuda_runfile ]] || usage_error "--cuda-runfile $cuda_runfile: no such file"
for k in "${client_keys[@]}"; do
    [[ -f $k ]] || usage_error "--client-key $k: no such file"
    [[ $k != *_secret ]] || usage_error "--client-key $k is a secret certificate: give the public one"
done
[[ -f $src/meson.build && -f $src/deploy/guest/titan-worker.service ]] ||
    usage_error "--src $src is not a titan source tree"
ip=${address%/*}

# The checks that make it safe to go on. TITAN_GUEST_OS_RELEASE only lets the tests point at a fixture.
os_release=${TITAN_GUEST_OS_RELEASE:-/etc/os-release}
# shellcheck disable=SC1090 # os-release is sourced as its specification says
os_id=$( (. "$os_release" 2>/dev/null && printf '%s' "${ID:-}") || true)
if [[ $os_id != arch ]]; then
    printf '%s: this is for an Arch Linux guest (ID=arch in %s), not "%s"; nothing was changed\n' \
        "$SELF" "$os_release" "${os_id:-unknown}" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    printf '%s: run it as root (sudo %s ...); nothing was changed\n' "$SELF" "$SELF" >&2
    exit 2
fi

# ---- 1. packages ----
headers=()
for k in linux linux-lts linux-zen linux-hardened; do
    if pacman -Q "$k" >/dev/null 2>&1; then headers+=("$k-headers"); fi
done
((${#headers[@]})) || die "no Arch kernel package (linux, linux-lts, ...) installed: the DKMS driver needs its headers"
say "installing packages"
pacman -Syu --needed --noconfirm base-devel git meson ninja pkgconf python dkms "${headers[@]}" \
    zeromq czmq jansson hiredis openblas libyaml libmicrohttpd systemd-libs pciutils libvirt cmocka

# ---- 2. nouveau out ----
blacklist=/etc/modprobe.d/blacklist-nouveau.conf
want=$'# Written by titan guest-setup.sh: the NVIDIA driver, not nouveau, takes the GPU.\nblacklist nouveau\noptions nouveau modeset=0'
if [[ ! -f $blacklist || $(<"$blacklist") != "$want" ]]; then
    say "blacklisting nouveau ($blacklist)"
    printf '%s\n' "$want" >"$blacklist"
    if command -v mkinitcpio >/dev/null; then mkinitcpio -P; fi
fi

# ---- 3. the driver from the AUR, built without root ----
aur_build() { # aur_build PKGBASE PACKAGE... : clone or update, makepkg as $build_user, pacman -U the PACKAGEs
    local base=$1 dir pkg file
    shift
    dir=/var/lib/$build_user/$base
    if [[ -d $dir/.git ]]; then
        sudo -u "$build_user" git -C "$dir" pull --ff-only
    else
        sudo -u "$build_user" git clone "https://aur.archlinux.org/$base.git" "$dir"
    fi
    # -s: makepkg installs the build dependencies through sudo (the drop-in below allows pacman only).
    (cd "$dir" && sudo -u "$build_user" makepkg -s --noconfirm --needed --cleanbuild)
    local files=()
    for pkg in "$@"; do
        file=$(cd "$dir" && { sudo -u "$build_user" makepkg --packagelist |
            grep -E "/$pkg-[^-/]+-[^-/]+-[^-/]+\.pkg\.tar\.[a-z]+$" | head -n 1 || true; })
        [[ -n $file && -f $file ]] || die "makepkg built no package $pkg in $dir"
        files+=("$file")
    done
    pacman -U --needed --noconfirm "${files[@]}"
}

if ((!skip_driver)); then
    if pacman -Q "nvidia-${driver}xx-dkms" >/dev/null 2>&1; then
        say "nvidia-${driver}xx-dkms is installed already"
    else
        for other in nvidia nvidia-dkms nvidia-open nvidia-open-dkms nvidia-utils; do
            if pacman -Q "$other" >/dev/null 2>&1; then
                die "$other is installed: remove it first (pacman -Rns $other); it conflicts with nvidia-${driver}xx"
            fi
        done
        id "$build_user" >/dev/null 2>&1 ||
            useradd --system --create-home --home-dir "/var/lib/$build_user" --shell /usr/bin/nologin "$build_user"
        sudoers=/etc/sudoers.d/90-titan-build
        printf '%s ALL=(root) NOPASSWD: /usr/bin/pacman\n' "$build_user" >"$sudoers"
        chmod 0440 "$sudoers"
        trap 'rm -f "$sudoers"' EXIT
        say "building nvidia-${driver}xx from the AUR as $build_user"
        aur_build "nvidia-${driver}xx-utils" "nvidia-${driver}xx-utils" "nvidia-${driver}xx-dkms"
        rm -f "$sudoers"
        trap - EXIT
    fi
    systemctl enable nvidia-persistenced.service 2>/dev/null || true

    # ---- 4. CUDA ----
    if [[ -n $cuda_runfile ]]; then
        ver=$(basename "$cuda_runfile" | sed -n 's/^cuda_\([0-9]*\.[0-9]*\).*/\1/p')
        [[ -n $ver ]] || die "--cuda-runfile $cuda_runfile: expected NVIDIA's name, cuda_VERSION_DRIVER_linux.run"
        if [[ -x /opt/cuda-$ver/bin/nvcc ]]; then
            say "CUDA $ver is installed already in /opt/cuda-$ver"
        else
            say "installing the CUDA $ver toolkit (not its driver) in /opt/cuda-$ver"
            # --override: the runfile's check of the host compiler; nvcc still needs a supported gcc to build.
            sh "$cuda_runfile" --silent --toolkit --installpath="/opt/cuda-$ver" --no-man-page --override
        fi
        cuda_home=/opt/cuda-$ver
    elif ((driver == 580)); then
        pacman -S --needed --noconfirm cuda
        cuda_home=/opt/cuda
        nvcc_ver=$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
        if [[ ${nvcc_ver:-0} -ge 13 ]]; then
            say "WARNING: pacman's cuda is CUDA $nvcc_ver, which cannot build for Maxwell (sm_52);" \
                "give --cuda-runfile cuda_12.9.x_*.run"
        fi
    else
        cuda_home=
        say "NOTE: no CUDA installed. The 470 driver runs CUDA up to 11.4: download" \
            "cuda_11.4.4_470.82.01_linux.run from NVIDIA's archive and run again with --cuda-runfile FILE" \
            "(its nvcc wants gcc <= 10)"
    fi
    if [[ -n ${cuda_home:-} ]]; then
        # shellcheck disable=SC2016 # $CUDA_HOME and $PATH are for the login shell to expand
        printf 'export CUDA_HOME=%s\nexport PATH="$CUDA_HOME/bin:$PATH"\n' "$cuda_home" >/etc/profile.d/titan-cuda.sh
    fi
fi

# ---- 5. titan ----
say "building titan from $src"
build=$src/build-guest
# The CUDA backend module, for the Titan X (sm_52) whatever else the toolkit builds; CUDA_CCBIN picks
# nvcc's host compiler when the system gcc is too new for the toolkit (CUDA 11.4 wants gcc <= 10).
if [[ -z ${cuda_home:-} && -f /etc/profile.d/titan-cuda.sh ]]; then
    cuda_home=$(sed -n 's/^export CUDA_HOME=//p' /etc/profile.d/titan-cuda.sh)
fi
cuda_opts=(-Dcuda=disabled)
if [[ -n $cuda_home && -x $cuda_home/bin/nvcc ]]; then
    cuda_opts=(-Dcuda=enabled "-Dcuda-path=$cuda_home" -Dcuda-arch=52)
    [[ -n ${CUDA_CCBIN:-} ]] && cuda_opts+=("-Dcuda-ccbin=$CUDA_CCBIN")
else
    say "WARNING: no CUDA toolkit: building the CPU backend only; the unit's --device cuda will fail"
fi
if [[ -f $build/build.ninja ]]; then
    meson setup --reconfigure "$build" "$src" --prefix /usr/local --buildtype release "${cuda_opts[@]}"
else
    meson setup "$build" "$src" --prefix /usr/local --buildtype release "${cuda_opts[@]}"
fi
meson compile -C "$build"
meson install -C "$build" --no-rebuild

getent group titan >/dev/null || groupadd --system titan
id titan >/dev/null 2>&1 ||
    useradd --system --gid titan --groups video --no-create-home --home-dir /var/lib/titan \
        --shell /usr/bin/nologin titan

# ---- 6. /etc/titan ----
install -d -m 0755 /etc/titan
install -d -m 0755 /etc/titan/clients
[[ -f /etc/titan/worker.conf ]] || install -m 0644 "$src/deploy/titan/worker.conf" /etc/titan/worker.conf
if [[ ! -f /etc/titan/worker_secret ]]; then
    say "making the worker's CURVE key pair in /etc/titan"
    /usr/local/bin/titan keygen --out /etc/titan --name worker
fi
chown root:titan /etc/titan/worker_secret
chmod 0640 /etc/titan/worker_secret
for k in "${client_keys[@]}"; do
    install -m 0644 "$k" "/etc/titan/clients/$(basename "$k")"
done

# ---- 7. the network ----
net=/etc/systemd/network/10-titan.network
install -d -m 0755 /etc/systemd/network
sed -e "s|^Address=.*|Address=$address|" -e "s|^Gateway=.*|Gateway=$gateway|" -e "s|^DNS=.*|DNS=$dns|" \
    "$src/deploy/guest/10-titan.network" >"$net.new"
mv "$net.new" "$net"
chmod 0644 "$net"
systemctl enable systemd-networkd.service systemd-networkd-wait-online.service systemd-resolved.service
# DNS= reaches programs through systemd-resolved's stub; leave a resolv.conf someone manages alone.
if [[ ! -L /etc/resolv.conf ]] && ! grep -qv '^#' /etc/resolv.conf 2>/dev/null; then
    ln -sf /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
fi

# ---- 8. the unit ----
sed "s|192\.168\.122\.10|$ip|g" "$src/deploy/guest/titan-worker.service" >/etc/systemd/system/titan-worker.service.new
mv /etc/systemd/system/titan-worker.service.new /etc/systemd/system/titan-worker.service
systemctl daemon-reload
systemctl enable titan-worker.service

say "done. Reboot the guest (nouveau out, the nvidia module in); titan-worker then starts on tcp://$ip:5555"
say "copy the worker's public certificate /etc/titan/worker to the host, and from the host run:"
say "  titan --endpoint tcp://$ip:5555 --server-key worker --curve-secret HOST_secret ping"
say "  curl -s http://$ip:9100/healthz"
