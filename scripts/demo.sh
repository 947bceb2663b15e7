#!/usr/bin/env bash
# Sets up this machine (Debian 12, as root), builds libgod, starts it with a
# local state directory (./demo) whose storage pool holds the fixture guest,
# boots a demo VM and shows how to reach it. Ctrl-C deletes the demo VM and
# stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh
cargo build --release --quiet --bin libgod

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

"$root/target/release/libgod" --socket "$sock" --readonly-socket "$demo/libgo-ro.sock" \
    --state-dir "$demo/state" --run-dir "$demo/run" --image-dir "$demo/images" >"$demo/libgod.log" 2>&1 &
daemon=$!
api() { curl -sS --unix-socket "$sock" -H 'content-type: application/json' "$@"; }
for _ in $(seq 100); do api http://libgo/health >/dev/null 2>&1 && break; sleep 0.1; done
api http://libgo/health; echo

cmdline=$(cat fixtures/out/cmdline)
api -X DELETE http://libgo/api/v1/vms/demo >/dev/null 2>&1 || true
echo "== creating the demo VM (linked clone of base.qcow2, grown to 2 GiB)"
api -X POST http://libgo/api/v1/vms -d "{\"name\": \"demo\", \"vcpus\": 1, \"memory\": 256, \"disk_size\": 2,
  \"base_image\": \"base.qcow2\", \"tags\": [\"demo\"],
  \"boot\": {\"kernel\": \"vmlinuz\", \"initrd\": \"initrd.img\", \"cmdline\": \"$cmdline\"}}"
echo
echo "== starting it"
t0=$(date +%s%N)
api -X POST http://libgo/api/v1/vms/demo/start; echo
id=$(api http://libgo/api/v1/vms/demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
log="$demo/state/vms/$id/console.log"
for _ in $(seq 600); do grep -q LIBGO-READY "$log" 2>/dev/null && break; sleep 0.1; done
echo "guest ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms:"
tr -d '\r' <"$log" | grep '^LIBGO-'

cat <<MSG

libgod is running (pid $daemon, log: $demo/libgod.log). Try:
  curl --unix-socket $sock http://libgo/api/v1/vms
  curl --unix-socket $sock http://libgo/api/v1/vms/demo/config
  curl --unix-socket $sock -X POST http://libgo/api/v1/vms/demo/reboot
  curl --unix-socket $sock -X POST http://libgo/api/v1/vms/demo/stop
  curl --unix-socket $sock http://libgo/openapi.json
Serial console log: $log
Run a command in the guest:  echo '1 uname -a' | socat - UNIX-CONNECT:$demo/run/vms/$id/console.sock
Press Ctrl-C to delete the demo VM and stop libgod.
MSG

cleanup() {
    trap - INT TERM
    echo; echo "== deleting the demo VM and stopping libgod"
    api -X DELETE http://libgo/api/v1/vms/demo >/dev/null || true
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}
trap cleanup INT TERM
if [ "${LIBGO_DEMO_NONINTERACTIVE:-}" = 1 ] || [ ! -t 0 ]; then
    cleanup
else
    wait "$daemon"
fi
