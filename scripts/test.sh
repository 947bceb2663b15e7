#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) and runs the whole test suite:
# formatting, lints, unit tests and the integration tests that boot real
# guests under QEMU. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

bash scripts/setup.sh
stop_engine() {
    # Stop the Docker engine if setup started it (tests may have restarted it).
    if [ -f target/libgo-dockerd.started ] && [ -f /var/run/docker.pid ]; then
        kill "$(cat /var/run/docker.pid)" 2>/dev/null || true
        rm -f target/libgo-dockerd.started
    fi
}
trap stop_engine EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
# Integration tests bound how many guests boot at once themselves
# (LIBGO_TEST_GUESTS, default 2: TCG guests are CPU-hungry).
cargo test --quiet --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}

passed=$(grep -Eo '[0-9]+ passed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')

echo "== API fuzzing (scripts/fuzz-api.sh, summary in target/fuzz-api/summary.txt)"
# Counted as one test: schemathesis against the live agent's OpenAPI document.
if bash scripts/fuzz-api.sh >target/fuzz-api.log 2>&1; then
    passed=$((passed + 1))
    fuzz="passed"
else
    failed=$((failed + 1))
    fuzz="FAILED (target/fuzz-api.log)"
    status=1
    # The CI keeps only this output: show what schemathesis found.
    sed -n '/^=* *FAILURES/,/^=* *SUMMARY/p' target/fuzz-api/schemathesis.log 2>/dev/null | cut -c1-300 | head -120
    grep -E '^  [a-z_]+: [1-9]' target/fuzz-api/summary.txt 2>/dev/null
fi
grep -E '^(requests sent|status histogram|time taken|result):' target/fuzz-api/summary.txt 2>/dev/null || tail -20 target/fuzz-api.log
echo "api fuzzing: $fuzz"
echo
echo "suite took $(( $(date +%s) - start )) s"
echo "total: $passed passed, $failed failed"
exit "$status"
