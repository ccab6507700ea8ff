#!/usr/bin/env bash
# `edgerun verify --fidelity ARTIFACT` on an emulated Cortex-A76 (Raspberry Pi 5's core), in the ARM
# lane's cached root file system and venv (run `make test-arm` first: it installs this tree's wheel
# there). A documented extra, not part of CI: the demo artifact takes about a minute.
#   bash tests/arm/demo_fidelity.sh out/demo/onnx-int4
set -euo pipefail
cd "$(dirname "$0")/../.."
ART=$(realpath "${1:?usage: demo_fidelity.sh ARTIFACT_DIR}")
CACHE=${EDGERUN_ARM_CACHE:-/var/cache/edgerun-arm}
ROOTFS=$(ls -d "$CACHE"/rootfs-*/ 2>/dev/null | head -1) || true
VENV=$(ls -td "$CACHE"/venv-*/ 2>/dev/null | head -1) || true
[ -n "$ROOTFS" ] && [ -n "$VENV" ] || { echo "error: no ARM lane cache in $CACHE (run make test-arm)" >&2; exit 2; }
ROOTFS=${ROOTFS%/} VENV=${VENV%/}
WORK=$(mktemp -d "$CACHE/demo.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
eval "$(sed -n '/^in_rootfs() {/,/^}/p;/^write_cpuinfo() {/,/^}/p' tests/arm/lane.sh)"
cp -r "$ART" "$WORK/art"
cp -r tests/arm "$WORK/arm"
up=$WORK/up-a76
mkdir -p "$up/root/etc"
features=$(in_rootfs cortex-a76 "" "$up" python3 /lane/arm/check.py hwcaps)
write_cpuinfo "$WORK/cpuinfo" "0x41 0x4 0xd0b 1" "$features"
LIMIT_S=1500 in_rootfs cortex-a76 "$WORK/cpuinfo" "$up" /opt/edgerun/bin/edgerun verify --fidelity /lane/art --json
