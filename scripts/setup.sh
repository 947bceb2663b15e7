#!/usr/bin/env bash
# Installs what libgo needs on a Debian 12 host (as root) and builds the
# fixture guest. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
have qemu-img || need+=(qemu-utils)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx acpid || need+=(busybox-static)
have mke2fs || need+=(e2fsprogs)
have cpio || need+=(cpio)
have curl || need+=(curl)
have socat || need+=(socat)
have genisoimage || need+=(genisoimage)
have ip || need+=(iproute2)
have dockerd || need+=(docker.io)
have python3 || need+=(python3)
# The docs page's browser test drives Debian's headless Chromium.
[ -x /usr/bin/chromium ] || need+=(chromium)
# iSCSI: a userspace target (tgtd, tgtadm), libiscsi's initiator tools
# (iscsi-ls, iscsi-readcapacity16, iscsi-inq) and QEMU's iscsi:// driver.
have tgtd || need+=(tgt)
have iscsi-ls || need+=(libiscsi-bin)
dpkg -s qemu-block-extra >/dev/null 2>&1 || need+=(qemu-block-extra)
# The unit is checked with systemd-analyze verify (no systemd as PID 1
# needed); tests/systemd.rs runs the daemon in a mount namespace (unshare).
have systemd-analyze || need+=(systemd)
have unshare || need+=(util-linux)
# The Debian package: built with dpkg-deb, its dependencies found by
# dpkg-shlibdeps, checked by lintian, installed and removed by the suite.
have dpkg-shlibdeps || need+=(dpkg-dev)
have lintian || need+=(lintian)
have deb-systemd-helper || need+=(init-system-helpers)
have adduser || need+=(adduser)
have help2man || need+=(help2man)
# Cluster coordination: tests/etcd_coord.rs runs its own etcd (its own
# ports and data directory), never the packaged service.
have etcd || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q "${need[@]}" >/dev/null
    }
fi
if ! have cargo; then
    echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
bash fixtures/build.sh >/dev/null

# A Docker engine for the container API: started here when none answers.
# Its pid goes to target/libgo-dockerd.started so the test run can stop
# what it started (and only that).
if ! docker info >/dev/null 2>&1; then
    mkdir -p target
    setsid dockerd >target/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start (target/dockerd.log)" >&2; exit 1; }
    touch target/libgo-dockerd.started
fi
echo "setup: ok (qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), fixtures in fixtures/out)"
