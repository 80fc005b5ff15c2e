"""`crewgraph serve --ssl-certfile/--ssl-keyfile`: HTTPS and WSS with a certificate from
a throwaway CA (trustme); plain HTTP to the TLS port gets nowhere."""

from __future__ import annotations

import json
import signal
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import websockets

from tests.conftest import PASSWORD
from tests.support.client import op
from tests.support.serve import serve_env, spawn, stop, wait_until_ready
from tests.support.services import free_port


async def test_serve_over_tls(settings: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    issued.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    trusted = ssl.create_default_context(cafile=str(ca_file))

    port = free_port()
    output = tmp_path / "serve.log"
    env = serve_env(settings, port, tmp_path / "data")
    proc = spawn(env, output, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    try:
        base = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, verify=trusted, timeout=10) as client:
            await wait_until_ready(client, proc, output, 60)
            variables = {
                "input": {
                    "tenantName": f"TLS {uuid.uuid4().hex[:6]}",
                    "email": f"tls-{uuid.uuid4().hex[:8]}@example.com",
                    "password": PASSWORD,
                }
            }
            registered = await client.post(
                "/graphql", json={"query": op("Register"), "variables": variables}
            )
            assert registered.status_code == 200, registered.text
            token = registered.json()["data"]["register"]["accessToken"]
            me = await client.post(
                "/graphql",
                json={"query": op("Me")},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert me.json()["data"]["me"]["email"] == variables["input"]["email"]

        async with websockets.connect(
            f"wss://127.0.0.1:{port}/graphql", ssl=trusted, subprotocols=["graphql-transport-ws"]
        ) as socket:
            await socket.send(
                json.dumps(
                    {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
                )
            )
            assert json.loads(await socket.recv())["type"] == "connection_ack"

        # The certificate is really checked: not trusted without the CA ...
        async with httpx.AsyncClient(base_url=base, timeout=5) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")
        # ... and the port speaks nothing but TLS.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get("/healthz")
        assert stop(proc, signal.SIGTERM) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
