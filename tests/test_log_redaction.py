"""No raw token in any log line or gateway-made error body, whatever carrier it came in."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets

from fixtures.proxy import REPO, call
from test_forward_target import raw_request

KNOWN = (
    "glcbt-demo-app-job"  # valid in policies/grants.example.yaml: the allowed path is logged too
)


def carriers(token: str) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """(method, target, headers, body): each way a client can send a job token."""
    basic = base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return [
        ("GET", "/api/v4/job", {"JOB-TOKEN": token}, None),
        ("GET", "/api/v4/job", {"PRIVATE-TOKEN": token}, None),
        ("GET", "/api/v4/job", {"Authorization": f"Basic {basic}"}, None),
        ("GET", "/api/v4/job", {"Authorization": f"Bearer {token}"}, None),
        ("GET", f"/api/v4/job?job_token={token}", {}, None),
        ("GET", f"/api/v4/projects/1?token={token}", {}, None),
        ("GET", f"/api/v4/projects/1?private_token={token}&x=1", {}, None),
        ("GET", f"/api/v4/projects/1?access_token={token}", {}, None),
        ("POST", "/api/v4/projects/1/releases", form, f"name=r&job_token={token}".encode()),
        (
            "POST",
            "/api/v4/projects/1/releases",
            {"Content-Type": "application/json"},
            json.dumps({"job_token": token}).encode(),
        ),
        ("GET", "/api/v4/projects/acme%2Fapp", {"JOB-TOKEN": token, "PRIVATE-TOKEN": token}, None),
    ]


async def test_no_token_reaches_a_log_line_or_an_error_body(an_upstream, a_gateway_process):
    grants = REPO / "policies" / "grants.example.yaml"
    gateway = a_gateway_process(
        "--upstream", an_upstream.url, "--store", f"file://{grants}", "--log-level", "debug"
    )
    tokens = [f"s3cr3t{secrets.token_hex(12)}", f"glcbt-{secrets.token_hex(12)}", KNOWN]
    bodies = []
    for token in tokens:
        for method, target, headers, body in carriers(token):
            answer = await call(method, gateway.url + target, headers=headers, data=body)
            if "X-Gateway-Reason" in answer.headers:  # gateway-made, not the upstream's echo
                bodies.append(answer.body.decode())
        # A malformed header: aiohttp's parser error quotes the raw bytes it choked on.
        head = f"GET /api/v4/job HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {token}\x01\r\n\r\n"
        await raw_request(gateway.port, head)
    await call("GET", gateway.url + "/api/v4/job", headers={"JOB-TOKEN": KNOWN})

    await asyncio.sleep(0.3)
    logs = gateway.log_text()
    assert len(gateway.events("request")) >= 3 * len(carriers("x"))
    assert "malformed request refused" in logs
    assert any(line.get("fingerprint") for line in gateway.events("request"))
    assert bodies
    for token in tokens:
        assert token not in logs
        assert all(token not in body for body in bodies)
    assert "[REDACTED]" in logs
