"""Writes target/fuzz-api/summary.txt of scripts/fuzz-api.sh from
schemathesis' JSON report and the hooks' status counts; exits 1 on any
failure.

    fuzz-api-summary.py OUT_DIR SCHEMATHESIS_STATUS STARTED_UNIX DOCKER_UP ALIVE
"""

import json
import pathlib
import sys
import time

out, st_status, started, docker_up, alive = (
    pathlib.Path(sys.argv[1]),
    int(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4] == "1",
    sys.argv[5] == "1",
)
# The failure codes of schemathesis' checks (`st explain <code>`).
CHECKS = {
    "not_a_server_error": ["ST101", "ST102"],
    "status_code_conformance": ["ST103"],
    "content_type_conformance": ["ST104", "ST105", "ST106"],
    "response_headers_conformance": ["ST107"],
    "response_schema_conformance": ["ST108", "ST109", "ST110", "ST111"],
    "max_response_time": ["ST112"],
    "negative_data_rejection": ["ST201"],
    "positive_data_acceptance": ["ST202"],
    "missing_required_header": ["ST203"],
    "unsupported_method": ["ST204"],
    "allow_header_conformance": ["ST205"],
    "use_after_free": ["ST301"],
    "ensure_resource_availability": ["ST302"],
    "ignored_auth": ["ST401"],
    "object_level_authorization": ["ST402"],
}
problems = []
try:
    report = json.loads((out / "report.json").read_text())
except (OSError, ValueError) as e:
    report = {}
    problems.append(f"no JSON report ({e})")
try:
    stats = json.loads((out / "statuses.json").read_text())
except (OSError, ValueError) as e:
    stats = {}
    problems.append(f"no status counts ({e})")
by_code = {f["code"]: f["count"] for f in report.get("failures", [])}
errors = sum(e.get("count", 1) for e in report.get("errors", []))
unavailable = stats.get("unavailable", {})
if unavailable.get("other"):
    problems.append(f"{unavailable['other']} answers 503 without an absent backend")
if unavailable.get("docker-but-it-answers"):
    problems.append(
        f"{unavailable['docker-but-it-answers']} answers 503 'Docker absent' while the engine answered"
    )
if not alive:
    problems.append("the agent did not survive the run (no /health answer)")
if st_status != 0:
    problems.append(f"schemathesis exited {st_status}")
if by_code:
    problems.append(f"{sum(by_code.values())} failures")
if errors:
    problems.append(f"{errors} errors")
if not stats.get("requests"):
    problems.append("no request sent")

lines = [
    f"command: {report.get('command', '?')}",
    f"seed: {report.get('seed', '?')}",
    f"time taken: {int(time.time()) - started} s in all, "
    f"{report.get('running_time', 0):.0f} s of schemathesis",
    f"docker at the start: {'running' if docker_up else 'absent'}",
    "phases: " + ", ".join(f"{k} {v['status']}" for k, v in report.get("phases", {}).items()),
    f"operations tested: {report.get('operations', {}).get('tested', 0)}",
    f"requests sent: {stats.get('requests', 0)}",
    "status histogram: "
    + ", ".join(f"{k}: {v}" for k, v in stats.get("statuses", {}).items()),
    "503 answers by reason: "
    + (", ".join(f"{k}: {v}" for k, v in sorted(unavailable.items())) or "none"),
    "failures per check:",
]
for check, codes in CHECKS.items():
    lines.append(f"  {check}: {sum(by_code.get(c, 0) for c in codes)}")
for code, n in sorted(by_code.items()):
    if not any(code in codes for codes in CHECKS.values()):
        lines.append(f"  {code}: {n}")
lines.append(f"errors: {errors}")
lines.append("result: " + ("FAILED: " + "; ".join(problems) if problems else "passed"))
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if problems else 0)
