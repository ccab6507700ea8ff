#!/usr/bin/env bash
# The ARM lane (`make test-arm`, run by .ci/run): the lean wheel of this working tree in an arm64
# Debian root file system under qemu-user, on several emulated CPUs, each with a truthful
# /proc/cpuinfo and, for board profiles, a faked device tree. Per CPU (tests/arm/check.py):
# profile detection, tiny onnx-fp32 / int4 artifacts against the host's numbers, edgerun.load +
# generate, `edgerun verify --fidelity` of the int4 level-4 artifact (the device's KL against the
# reference it ships) and `edgerun serve`'s /health. Emulation proves correctness, never speed.
#
# Needs root (apt-get, mmdebstrap, binfmt_misc, mounts) and Debian's package mirror plus PyPI on
# a cold cache. The root file system and the venv are cached outside the repo in
# $EDGERUN_ARM_CACHE (default /var/cache/edgerun-arm), keyed by a hash of their recipes.
# EDGERUN_SKIP_ARM=1 skips the lane, saying so; anything else that stops it is a failure.
# EDGERUN_ARM_ONLY="a72-pi4 n1" runs only those CPUs (names below), for development.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

if [ "${EDGERUN_SKIP_ARM:-}" = 1 ]; then
    echo "SKIPPED: the ARM lane (EDGERUN_SKIP_ARM=1)"
    exit 0
fi

CACHE=${EDGERUN_ARM_CACHE:-/var/cache/edgerun-arm}
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES=python3,python3-venv,ca-certificates
# name, qemu CPU, MIDR (implementer variant part revision), device-tree model, Jetson?, profile
CPUS=(
    "a53|cortex-a53|0x41 0x0 0xd03 4||no|generic-aarch64"
    "a72-pi4|cortex-a72|0x41 0x0 0xd08 3|Raspberry Pi 4 Model B Rev 1.4|no|raspberry-pi-4"
    "a76-pi5|cortex-a76|0x41 0x4 0xd0b 1|Raspberry Pi 5 Model B Rev 1.0|no|raspberry-pi-5"
    "n1|neoverse-n1|0x41 0x4 0xd0c 1||no|generic-aarch64"
    "n1-orin-nano|neoverse-n1|0x41 0x4 0xd0c 1|NVIDIA Jetson Orin Nano Developer Kit|yes|jetson-orin"
)

start=$(date +%s)
say() { echo "== arm: $* ($(($(date +%s) - start)) s)" >&2; }
die() {
    echo "FAILED: the ARM lane: $*" >&2
    exit 1
}

host_tools() {
    [ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, binfmt_misc, mounts); EDGERUN_SKIP_ARM=1 skips it"
    if ! command -v mmdebstrap >/dev/null || ! [ -x /usr/bin/qemu-aarch64-static ]; then
        say "installing mmdebstrap and qemu-user-static"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            mmdebstrap qemu-user-static binfmt-support >/dev/null ||
            die "cannot install mmdebstrap / qemu-user-static (no package mirror?)"
    fi
    mountpoint -q /proc/sys/fs/binfmt_misc ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
        die "cannot register qemu-aarch64 with binfmt_misc"
    # F: the kernel holds the interpreter open, so it also runs inside the chroot
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        die "qemu-aarch64's binfmt entry lacks the F flag (install qemu-user-static)"
}

build_rootfs() { # DIR
    mmdebstrap --quiet --arch=arm64 --variant=minbase --include="$PACKAGES" "$SUITE" "$1" "$MIRROR"
}

# The venv: the wheel's dependencies and the serve extra, from PyPI's aarch64 wheels.
build_venv() { # run inside the root file system
    python3 -m venv /opt/edgerun
    /opt/edgerun/bin/pip install -q --only-binary=:all: "$@"
}

recipe_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# Run a command in an overlay of the cached root file system (so runs never change it), as the
# emulated CPU $1, with /proc/cpuinfo from file $2 (or the host's if empty) and the upper layer
# $3 (which may hold faked files: sys/firmware, etc/nv_tegra_release).
in_rootfs() { # CPU CPUINFO UPPER CMD...
    local cpu=$1 cpuinfo=$2 upper=$3
    shift 3
    mkdir -p "$upper/root" "$upper/work" "$upper/merged"
    QEMU_CPU=$cpu timeout "${LIMIT_S:-1800}" unshare --mount --propagation private bash -euc '
        rootfs=$1 venv=$2 work=$3 cpuinfo=$4 upper=$5; shift 5
        m=$upper/merged
        mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$upper/root,workdir=$upper/work" "$m"
        mkdir -p "$m/opt/edgerun" "$m/lane"
        cp /etc/resolv.conf "$m/etc/resolv.conf"
        # the host'"'"'s CA bundle: PyPI may be reached through a proxy that only the host trusts
        cp /etc/ssl/certs/ca-certificates.crt "$m/etc/host-ca.crt" 2>/dev/null ||
            cp "$m/etc/ssl/certs/ca-certificates.crt" "$m/etc/host-ca.crt"
        mount -t proc proc "$m/proc"
        mount --rbind /sys "$m/sys"
        mount --rbind /dev "$m/dev"
        [ -z "$cpuinfo" ] || mount --bind "$cpuinfo" "$m/proc/cpuinfo"
        if [ -e "$upper/devicetree" ]; then
            mount -t tmpfs tmpfs "$m/sys/firmware"
            mkdir -p "$m/sys/firmware/devicetree/base"
            cp "$upper/devicetree" "$m/sys/firmware/devicetree/base/model"
        fi
        mount --bind "$venv" "$m/opt/edgerun"
        mount --bind "$work" "$m/lane"
        exec chroot "$m" env -i PATH=/opt/edgerun/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$QEMU_CPU" \
            LANG=C.UTF-8 PIP_CERT=/etc/host-ca.crt PIP_DEFAULT_TIMEOUT=180 \
            PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
    ' in_rootfs "$ROOTFS" "$VENV" "$WORK" "$cpuinfo" "$upper" "$@"
}

# /proc/cpuinfo as an arm64 kernel writes it, one entry per host CPU, for the emulated CPU.
write_cpuinfo() { # OUT "IMPLEMENTER VARIANT PART REVISION" FEATURES
    local out=$1 implementer variant part revision n
    read -r implementer variant part revision <<<"$2"
    : >"$out"
    for ((n = 0; n < $(nproc); n++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: %s\n' \
            "$n" "$3" "$implementer" >>"$out"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$variant" "$part" "$revision" >>"$out"
    done
}

cached() { # NAME KEY BUILDER: $CACHE/NAME-KEY, built by BUILDER DIR.tmp on a miss
    local dir=$CACHE/$1-$2
    if [ ! -e "$dir/.complete" ]; then
        say "building $1 (cache miss: $dir)"
        rm -rf "$dir" "$dir.tmp"
        mkdir -p "$dir.tmp"
        "$3" "$dir.tmp" >&2 || die "building $1 failed"
        touch "$dir.tmp/.complete"
        mv "$dir.tmp" "$dir"
        # older keys of the same thing are stale
        find "$CACHE" -maxdepth 1 -name "$1-*" ! -name "$1-$2" -exec rm -rf {} + 2>/dev/null || true
    fi
    echo "$dir"
}

make_venv() { # DIR
    VENV=$1
    local deps
    mapfile -t deps < <("$HOST_PY" - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["serve"]))
EOF
)
    in_rootfs cortex-a53 "" "$WORK/up-venv" bash -c "$(declare -f build_venv); build_venv \"\$@\"" \
        build_venv "${deps[@]}"
}

main() {
    host_tools
    mkdir -p "$CACHE"
    WORK=$(mktemp -d "$CACHE/run.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    ROOTFS=$(cached rootfs "$(recipe_hash "$(declare -f build_rootfs)" "$SUITE" "$PACKAGES")" build_rootfs)
    local venv_key
    venv_key=$(recipe_hash "$ROOTFS" "$(declare -f build_venv make_venv)" "$(sha256sum pyproject.toml)")
    VENV=$(cached venv "$venv_key" make_venv)

    say "wheel from the working tree, tiny artifacts and host reference"
    "$HOST_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
    cp -r tests/arm "$WORK/arm"
    "$HOST_PY" tests/arm/host.py "$WORK/art" >"$WORK/host.log" 2>&1 || {
        cat "$WORK/host.log"
        die "host export failed"
    }
    in_rootfs cortex-a53 "" "$WORK/up-wheel" pip install -q --no-deps --force-reinstall \
        "/lane/dist/$(basename "$WORK"/dist/edgerun-*.whl)" || die "wheel install failed"

    mkdir -p "$WORK/results" build/arm
    local line name cpu midr tree jetson expected up features
    for line in "${CPUS[@]}"; do
        IFS='|' read -r name cpu midr tree jetson expected <<<"$line"
        [[ " ${EDGERUN_ARM_ONLY:-$name} " == *" $name "* ]] || continue
        say "$name: qemu -cpu $cpu${tree:+, device tree '$tree'}"
        up=$WORK/up-$name
        mkdir -p "$up/root/etc"
        features=$(in_rootfs "$cpu" "" "$up" python3 /lane/arm/check.py hwcaps)
        write_cpuinfo "$WORK/cpuinfo-$name" "$midr" "$features"
        [ -z "$tree" ] || printf '%s\0' "$tree" >"$up/devicetree"
        [ "$jetson" = no ] || echo "# R36 (release), REVISION: 4.0, GCID: 0, BOARD: generic, EABI: aarch64" \
            >"$up/root/etc/nv_tegra_release"
        LIMIT_S=1200 in_rootfs "$cpu" "$WORK/cpuinfo-$name" "$up" python /lane/arm/check.py run \
            /lane/art "$expected" "/lane/results/$name.json" || die "$name: the checker failed (see above)"
        cp "$WORK/results/$name.json" build/arm/
    done
    say "done"
    local results=()
    for line in "${CPUS[@]}"; do
        [[ " ${EDGERUN_ARM_ONLY:-${line%%|*}} " == *" ${line%%|*} "* ]] && results+=("build/arm/${line%%|*}.json")
    done
    python3 tests/arm/check.py table "${results[@]}" || die "see the FAIL lines above"
}

# `make test-arm-gguf` (optional, slow: llama.cpp compiled under emulation): llama-cpp-python
# built in the root file system without llama.cpp's native CPU detection (under qemu it produces
# flags Debian 12's assembler rejects), for armv8.2-a + dot product (Pi 5, Orin, Graviton2).
gguf() {
    host_tools
    ROOTFS=$(cached rootfs "$(recipe_hash "$(declare -f build_rootfs)" "$SUITE" "$PACKAGES")" build_rootfs)
    WORK=$(mktemp -d "$CACHE/run.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    VENV=$WORK/venv
    mkdir -p "$VENV" "$WORK/wheels"
    say "building llama-cpp-python under qemu -cpu cortex-a76 (GGML_NATIVE=OFF)"
    local began=$SECONDS
    LIMIT_S=7200 in_rootfs cortex-a76 "" "$WORK/up-gguf" bash -euc '
        apt-get update -q && apt-get install -y -q --no-install-recommends build-essential cmake
        python3 -m venv /opt/edgerun
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod -DLLAMA_CURL=OFF" \
            /opt/edgerun/bin/pip wheel -q --no-deps -w /lane/wheels llama-cpp-python
        /opt/edgerun/bin/pip install -q /lane/wheels/llama_cpp_python-*.whl
        /opt/edgerun/bin/python -c "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    ' || die "llama-cpp-python did not build under emulation"
    say "llama-cpp-python built and imported in $((SECONDS - began)) s"
}

case "${1:-lane}" in
lane) main ;;
gguf) gguf ;;
*) die "usage: lane.sh [lane|gguf]" ;;
esac
