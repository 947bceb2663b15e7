#!/usr/bin/env bash
# The peer comparison in one command (Debian 12, root): installs and starts
# libvirt (virtlogd + libvirtd), LXD (dir pool, no network, a local busybox
# image) and the Docker engine, runs `cargo bench --bench compare`, writes
# benches/results/latest.md, and stops the daemons it started.
# Sizes: LIBGO_CMP_RUNS, LIBGO_CMP_DEFINED, LIBGO_CMP_RUNNING, LIBGO_CMP_RESTART.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

need=()
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system libvirt-clients)
/usr/bin/python3 -c 'import libvirt' 2>/dev/null || need+=(python3-libvirt)
command -v lxd >/dev/null || need+=(lxd lxd-client)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; }
fi

started=()
if ! pidof virtlogd >/dev/null; then setsid virtlogd -d; started+=(virtlogd); fi
if ! pidof libvirtd >/dev/null; then setsid libvirtd -d; started+=(libvirtd); fi
if ! pidof lxd >/dev/null; then
    setsid lxd --group lxd >target/lxd.log 2>&1 < /dev/null &
    started+=(lxd)
fi
cleanup() {
    for d in "${started[@]}"; do pkill -TERM -x "$d" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
lxd waitready --timeout 60
# LXD: a dir pool and no network (its VMs need vhost-vsock, absent here), a
# busybox image made locally (no image server is reachable).
if ! lxc storage show default >/dev/null 2>&1; then
    printf 'config: {}\nstorage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n' | lxd init --preseed
fi
if ! lxc image info libgo-bb >/dev/null 2>&1; then
    img=$(mktemp -d)
    mkdir -p "$img/rootfs/bin"
    cp /bin/busybox "$img/rootfs/bin/" && ln -sf busybox "$img/rootfs/bin/sh"
    printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  description: busybox for libgo benchmarks\n' "$(date +%s)" > "$img/metadata.yaml"
    tar -C "$img" -czf "$img/meta.tar.gz" metadata.yaml
    tar -C "$img/rootfs" -czf "$img/rootfs.tar.gz" .
    lxc image import "$img/meta.tar.gz" "$img/rootfs.tar.gz" --alias libgo-bb >/dev/null
    rm -rf "$img"
fi

start=$(date +%s)
cargo bench --bench compare
echo "harness took $(( $(date +%s) - start )) s; table in benches/results/latest.md"
