"""Issue 17 point 6 with real nginx in front of a real `serve`: behind trusted proxies the log's
`remote` is the real client (the right-most untrusted X-Forwarded-For address, as nginx's realip
and Envoy's xff_num_trusted_hops give), the proxy's X-Request-Id is kept, and every response
(forwarded or refused) carries the gateway's request id."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from fixtures.proxy import call, free_port
from test_deploy import nginx_binary

from gateway.ops.exchange import accepted_request_id, client_address

NGINX_AT = "127.0.0.2"  # nginx connects to the gateway from here (proxy_bind): the trusted hop
CLIENT_AT = "127.0.0.5"  # the client connects to nginx from here


def trusted(address: str | None) -> bool:
    return address in {"127.0.0.2", "127.0.0.3"}


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.9", ["1.2.3.4"], "127.0.0.9"),  # an untrusted peer's header is ignored
        ("127.0.0.2", ["1.2.3.4, 127.0.0.5"], "127.0.0.5"),  # a spoofed left part is skipped
        ("127.0.0.2", ["127.0.0.5, 127.0.0.3"], "127.0.0.5"),  # two trusted hops
        ("127.0.0.2", ["127.0.0.5", "127.0.0.3"], "127.0.0.5"),  # split over two headers
        ("127.0.0.2", ["127.0.0.3"], "127.0.0.3"),  # all trusted: the left-most
        ("127.0.0.2", [], "127.0.0.2"),  # no header: the proxy itself
        ("127.0.0.2", ["127.0.0.5, junk, 127.0.0.3"], "127.0.0.3"),  # stops at a malformed one
        ("127.0.0.2", ["2001:db8::1"], "2001:db8::1"),
        ("127.0.0.2", ["[2001:db8::1]"], "2001:db8::1"),
    ],
)
def test_the_client_address_is_the_right_most_untrusted_one(peer, forwarded, client) -> None:
    assert client_address(peer, forwarded, trusted) == client


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        (["0f3a9c2e7d5b4a1c8e6f0b9d2a7c4e1f"], "0f3a9c2e7d5b4a1c8e6f0b9d2a7c4e1f"),  # nginx
        (["6b1f2c3d-aaaa-4bbb-8ccc-123456789abc"], "6b1f2c3d-aaaa-4bbb-8ccc-123456789abc"),
        (["01HZX3K9Q7W2M4N6P8R0T2V4X6"], "01HZX3K9Q7W2M4N6P8R0T2V4X6"),
        (["x" * 129], None),
        (["has space"], None),
        (["new\nline"], None),
        (["a", "b"], None),
        ([""], None),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_well_formed(values, kept) -> None:
    assert accepted_request_id(values) == kept


def nginx_conf(root: Path, front: int, gateway: int) -> str:
    temp = "".join(
        f"    {kind}_temp_path {root}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    log_format ids '$request_id $upstream_http_x_request_id $status';\n"
        f"    access_log {root}/access.log ids;\n{temp}"
        f"    server {{\n        listen 127.0.0.1:{front};\n"
        "        location / {\n"
        f"            proxy_bind {NGINX_AT};\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "            proxy_set_header X-Request-Id $request_id;\n"
        f"            proxy_pass http://127.0.0.1:{gateway};\n"
        "        }\n    }\n}\n"
    )


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Callable[[int], int]]:
    """start(gateway port) -> nginx's port; nginx runs until the test ends."""
    binary = nginx_binary()
    procs: list[subprocess.Popen[bytes]] = []
    root = tmp_path / "nginx"

    def start(gateway: int) -> int:
        front = free_port()
        root.mkdir()
        (root / "nginx.conf").write_text(nginx_conf(root, front, gateway))
        proc = subprocess.Popen([binary, "-c", str(root / "nginx.conf"), "-p", str(root)])
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not (root / "nginx.pid").exists():
            assert proc.poll() is None, (root / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        return front

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


async def test_behind_nginx_the_log_has_the_client_and_nginx_request_id(
    nginx_in_front, an_upstream, a_gateway_process, tmp_path: Path
) -> None:
    gateway = a_gateway_process(
        "--upstream", an_upstream.url, "--trusted-proxies", f"{NGINX_AT}/32"
    )
    front = await asyncio.to_thread(nginx_in_front, gateway.port)
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_AT, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        spoofed = {"X-Forwarded-For": "198.51.100.7", "X-Request-Id": "client-chosen"}
        async with client.get(f"http://127.0.0.1:{front}/api/v4/version", headers=spoofed) as r:
            forwarded_id, forwarded_status = r.headers["X-Request-Id"], r.status
        bad = {"JOB-TOKEN": "glcbt-nobody"}
        async with client.get(
            f"http://127.0.0.1:{front}/api/v4/projects/1/releases", headers=bad
        ) as r:
            refused_id, refused_status = r.headers["X-Request-Id"], r.status

    assert (forwarded_status, refused_status) == (200, 401)
    lines = await asyncio.to_thread(gateway.wait_for_event, "request", 2)
    for line in lines:
        assert line["remote"] == CLIENT_AT  # not nginx, not the spoofed address
        assert line["peer"] == NGINX_AT
    access = (tmp_path / "nginx" / "access.log").read_text().split()
    nginx_ids = access[0::3]
    assert [line["request_id"] for line in lines] == nginx_ids  # nginx's $request_id, kept
    assert [forwarded_id, refused_id] == nginx_ids  # and on both responses
    assert an_upstream.last.header("X-Request-Id") == [nginx_ids[0]]  # and sent upstream
    assert "client-chosen" not in nginx_ids


async def test_without_a_trusted_hop_the_client_request_id_is_replaced(
    an_upstream, a_gateway_process
) -> None:
    gateway = a_gateway_process(
        "--upstream", an_upstream.url, "--trusted-proxies", f"{NGINX_AT}/32"
    )
    headers = {"X-Request-Id": "client-chosen", "X-Forwarded-For": "198.51.100.7"}

    answer = await call("GET", gateway.url + "/api/v4/version", headers=headers)

    assert answer.status == 200
    (line,) = await asyncio.to_thread(gateway.wait_for_event, "request")
    assert answer.headers["X-Request-Id"] == line["request_id"] != "client-chosen"
    assert line["remote"] == "127.0.0.1"
    assert "peer" not in line
