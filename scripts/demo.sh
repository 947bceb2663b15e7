#!/usr/bin/env bash
# Sets up this machine (Debian 12, as root), builds libgod, starts it with a
# local state directory (./demo) whose storage pool holds the fixture guest,
# boots a demo VM and shows how to reach it. Ctrl-C deletes the demo VM and
# stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh
cargo build --release --quiet --bins

demo="$root/demo"
# Guests' QEMU runs as the unprivileged libgo-qemu: it must pass through
# every directory above the demo's state. A checkout in a private home
# (/root is 0700) gets its demo state under /var/tmp instead.
searchable() {
    local d=$1
    while [ "$d" != / ]; do
        [ "$(( 0$(stat -c %a "$d") & 01 ))" -ne 0 ] || return 1
        d=$(dirname "$d")
    done
}
if ! searchable "$root"; then
    demo=/var/tmp/libgo-demo
    echo "== $root is not searchable by others: the demo lives in $demo"
fi
mkdir -p "$demo"
chmod 0711 "$demo"
sock="$demo/libgo.sock"
mkdir -p "$demo/images"
for f in vmlinuz initrd.img base.qcow2; do
    cp -u "fixtures/out/$f" "$demo/images/$f"
done

port=${LIBGO_DEMO_PORT:-8480}
"$root/target/release/libgod" --socket "$sock" --readonly-socket "$demo/libgo-ro.sock" \
    --state-dir "$demo/state" --run-dir "$demo/run" --image-dir "$demo/images" \
    --listen "127.0.0.1:$port" --plaintext >"$demo/libgod.log" 2>&1 &
daemon=$!
api() { curl -sS --unix-socket "$sock" -H 'content-type: application/json' "$@"; }
for _ in $(seq 100); do api http://libgo/health >/dev/null 2>&1 && break; sleep 0.1; done
api http://libgo/health; echo

cmdline=$(cat fixtures/out/cmdline)
export LIBGO_HOST="unix://$sock"
libgo() { "$root/target/release/libgo" "$@"; }
libgo vm delete demo >/dev/null 2>&1 || true
echo "== libgo vm create demo (linked clone of base.qcow2, grown to 2 GiB)"
libgo vm create demo --image base.qcow2 --vcpus 1 --memory 256M --disk-size 2G --tag demo \
    --kernel vmlinuz --initrd initrd.img --cmdline "$cmdline" -q
echo "== libgo vm start demo"
t0=$(date +%s%N)
libgo vm start demo
id=$(libgo vm show demo -q)
log="$demo/state/vms/$id/console.log"
for _ in $(seq 600); do grep -q LIBGO-READY "$log" 2>/dev/null && break; sleep 0.1; done
echo "guest ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms:"
tr -d '\r' <"$log" | grep '^LIBGO-'

cat <<MSG

libgod is running (pid $daemon, log: $demo/libgod.log). In another terminal:
  export LIBGO_HOST=unix://$sock PATH=$root/target/release:\$PATH
  libgo vm ls
  libgo vm console demo          # type: 1 uname -a   (Ctrl-a q detaches)
  libgo vm snapshot create demo first --memory
  libgo vm stop demo
or with curl:
  curl --unix-socket $sock http://libgo/api/v1/vms/demo/config
  curl --unix-socket $sock -X POST http://libgo/api/v1/vms/demo/reboot
The API in a browser: http://127.0.0.1:$port/docs (Authorize with the secret of
  libgo token create me --role admin -q)
Serial console log: $log
Press Ctrl-C to delete the demo VM and stop libgod.
MSG

cleanup() {
    trap - INT TERM
    echo; echo "== deleting the demo VM and stopping libgod"
    libgo vm delete demo >/dev/null || true
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}
trap cleanup INT TERM
if [ "${LIBGO_DEMO_NONINTERACTIVE:-}" = 1 ] || [ ! -t 0 ]; then
    cleanup
else
    wait "$daemon"
fi
