#!/usr/bin/env bash
# Schema-driven fuzzing of the API: a real libgod on a private socket and
# state directory with its TCP listener on loopback (plain HTTP), an admin
# API token made on its socket, and schemathesis (every check) against the
# /openapi.json it serves, through the token: authentication, roles and the
# audit trail are on the path of every request.
#
# Bounded in time (FUZZ_MAX_TIME seconds for the run itself, 150 by default,
# and a hard `timeout` around it). Writes target/fuzz-api/summary.txt
# (requests sent, status histogram, failures per check) and exits non-zero
# on any failure.
#
#   FUZZ_MAX_TIME      time budget of schemathesis (seconds, default 150)
#   FUZZ_MAX_EXAMPLES  test cases per operation and phase (default 40)
#   FUZZ_SEED          a seed, to replay a run
#   FUZZ_URL           fuzz an agent already listening there instead of
#                      starting one
#   FUZZ_AUTH_HEADER   a header sent with every request, for a listener that
#                      wants credentials ("Authorization: Bearer ...")
#   FUZZ_DOCKER_SOCKET the Docker socket of the agent started here (default
#                      the agent's own default; a missing path fuzzes the
#                      agent without an engine)
#   LIBGO_FIXTURES     the fixture guest (default fixtures/out)
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
out=target/fuzz-api
mkdir -p "$out"
rm -f "$out"/summary.txt "$out"/report.json "$out"/junit.xml "$out"/schemathesis.log \
    "$out"/statuses.json "$out"/libgod.log
started=$(date +%s)
max_time=${FUZZ_MAX_TIME:-150}
max_examples=${FUZZ_MAX_EXAMPLES:-40}

# schemathesis, pinned, in a virtual environment of its own under target/.
venv=$PWD/target/fuzz-venv
st=$venv/bin/schemathesis
if ! "$st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "fuzz: installing schemathesis $SCHEMATHESIS_VERSION"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q python3-venv >/dev/null 2>&1 || {
            apt-get update -q >/dev/null
            apt-get install -y -q python3-venv >/dev/null
        }
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

root=""
node=""
daemon_pid=""
cleanup() {
    set +e
    if [ -n "$root" ]; then
        # Every QEMU the daemon's VMs run, then the daemon.
        for pidfile in "$root"/run/vms/*/qemu.pid; do
            [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
        done
    fi
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    # What the fuzzer made in the Docker engine: its agent's containers (by
    # their owner label), and the images, networks and volumes it created.
    if [ -n "$root" ] && docker info >/dev/null 2>&1; then
        docker ps -aq --filter "label=io.libgo.agent=$node" | xargs -r docker rm -f >/dev/null 2>&1
        if [ -f "$out/statuses.json" ]; then
            python3 - "$out/statuses.json" <<'PY' | while read -r kind name; do
import json, sys
for kind, names in json.load(open(sys.argv[1])).get("created", {}).items():
    for name in names:
        print(kind, name)
PY
                case "$kind" in
                    images) docker rmi -f "$name" >/dev/null 2>&1 ;;
                    networks) docker network rm "$name" >/dev/null 2>&1 ;;
                    volumes) docker volume rm -f "$name" >/dev/null 2>&1 ;;
                esac
            done
        fi
    fi
    if [ -n "$root" ]; then
        cp "$root/libgod.log" "$out/libgod.log" 2>/dev/null
        rm -rf "$root"
    fi
}
trap cleanup EXIT

if [ -n "${FUZZ_URL:-}" ]; then
    url=$FUZZ_URL
else
    fixtures=${LIBGO_FIXTURES:-fixtures/out}
    [ -f "$fixtures/base.qcow2" ] || { echo "fuzz: no fixtures in $fixtures (run fixtures/build.sh)" >&2; exit 1; }
    cargo build --quiet --bin libgod
    bin=${CARGO_TARGET_DIR:-target}/debug/libgod
    root=$(mktemp -d /tmp/lgfuzz.XXXXXX)
    # QEMU runs unprivileged and must pass through to its VM's directory.
    chmod 0711 "$root"
    node=fuzz-$(basename "$root" | tr 'A-Z.' 'a-z-')
    mkdir -p "$root/images"
    cp "$fixtures/base.qcow2" "$fixtures/vmlinuz" "$fixtures/initrd.img" "$root/images/"
    # The base image the document's example names, so that creates succeed.
    cp "$fixtures/base.qcow2" "$root/images/debian-12.qcow2"
    sock=$root/libgo.sock
    # No QEMU emulator for this agent: the fuzzer may create VMs, but none
    # boots (a start answers 503, documented); qemu-img is the real one.
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Rate limits off: the fuzzer's pace is not the subject here (the
    # security tests check the limits).
    printf '[rate_limits]\ntcp_read = 0\ntcp_write = 0\n' >"$root/libgod.toml"
    "$bin" --config "$root/libgod.toml" --socket "$sock" --readonly-socket "$root/libgo-ro.sock" \
        --listen "127.0.0.1:$port" --plaintext --state-dir "$root/state" --run-dir "$root/run" \
        --image-dir "$root/images" --node-name "$node" --accel tcg \
        --qemu "$root/no-qemu-system-x86_64" \
        ${FUZZ_DOCKER_SOCKET:+--docker-socket "$FUZZ_DOCKER_SOCKET"} \
        >"$root/libgod.log" 2>&1 </dev/null &
    daemon_pid=$!
    for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "fuzz: libgod did not start" >&2; cat "$root/libgod.log" >&2; exit 1; }
    url=http://127.0.0.1:$port
    for _ in $(seq 100); do curl -sf "$url/health" >/dev/null 2>&1 && break; sleep 0.1; done
    # An admin API token, made by root on the socket.
    made=$(curl -sf --unix-socket "$sock" -X POST http://localhost/api/v1/tokens \
        -d '{"name":"fuzz","role":"admin"}')
    secret=$(printf '%s' "$made" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
    export FUZZ_TOKEN_ID=$(printf '%s' "$made" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    [ -n "${FUZZ_AUTH_HEADER:-}" ] || FUZZ_AUTH_HEADER="Authorization: Bearer $secret"
fi

# This agent has no QEMU emulator, and Docker may not run: 503 passes the
# server-error check, and the hooks hold every 503 to its reason (an absent
# QEMU, a Docker engine that does not answer its socket when asked at that
# moment, an unreachable registry); any other 503 fails the run.
config=$out/schemathesis.toml
docker_up=0
DOCKER_HOST=unix://${FUZZ_DOCKER_SOCKET:-/var/run/docker.sock} docker info >/dev/null 2>&1 && docker_up=1
cat >"$config" <<EOF
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

# Links between operations are the document's own (a created resource's id
# to the operations on it, a 202 to its job): the fuzzer does not guess
# others from field names (it took a bulk job's id for a VM's).
[phases.stateful.inference]
algorithms = ["location-headers"]
EOF

cp scripts/fuzz-api-hooks.py "$out/fuzz_api_hooks.py"
extra_args=()
[ -n "${FUZZ_SEED:-}" ] && extra_args=(--seed "$FUZZ_SEED")
[ -n "${FUZZ_AUTH_HEADER:-}" ] && extra_args+=(--header "$FUZZ_AUTH_HEADER")
# WebSocket routes are left out: schemathesis speaks plain HTTP only
# (tests/hostile.rs and the integration tests cover them). One worker:
# two race in hypothesis' own source inspection. A request that finds its
# kept-alive connection closed is retried once, as HTTP clients do; the
# agent must still answer /health, the same process, at the end.
set +e
(
    cd "$out" &&
        FUZZ_STATS=$PWD/statuses.json SCHEMATHESIS_HOOKS=fuzz_api_hooks PYTHONPATH=$PWD \
            timeout --kill-after=10 $((max_time + 60)) "$st" --config-file "$PWD/schemathesis.toml" \
            run "$url/openapi.json" \
            --checks all \
            --exclude-operation-id stream --exclude-operation-id exec_ws --exclude-operation-id vms_console \
            --max-time "$max_time" \
            --max-examples "$max_examples" \
            --workers 1 \
            --request-timeout 20 \
            --request-retries 1 \
            --suppress-health-check all \
            --report json,junit --report-dir "$PWD" \
            --report-json-path "$PWD/report.json" --report-junit-path "$PWD/junit.xml" \
            "${extra_args[@]}" \
            >"$PWD/schemathesis.log" 2>&1
)
st_status=$?
set -e
alive=1
curl -sf "$url/health" >/dev/null 2>&1 || alive=0
if [ -n "$daemon_pid" ] && ! kill -0 "$daemon_pid" 2>/dev/null; then alive=0; fi

tail -25 "$out/schemathesis.log"
echo
"$venv/bin/python" scripts/fuzz-api-summary.py "$out" "$st_status" "$started" "$docker_up" "$alive"
