"""TLS terminated by uvicorn itself (``ALB_SSL_CERTFILE`` / ``ALB_SSL_KEYFILE``), with a
key: the ``openai`` client over https, a plain-HTTP attempt refused by the handshake."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from bridge.policy.keys import parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import RunningFleet
from tests.bridge._support import running_bridge, settings_for


def _certificate(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_https_with_a_key(fleet: RunningFleet, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    keys = tmp_path / "keys.sqlite"
    token, _ = await keyring.create(SqliteKeys(keys), "tls", parse_scopes("inference"))
    settings = settings_for(
        fleet, auth="keys", keys_file=str(keys), ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    async with running_bridge(settings) as b:
        url = b.base_url.replace("http://", "https://")
        trust = ssl.create_default_context(cafile=str(cert))
        async with (
            httpx.AsyncClient(verify=trust) as http,
            openai.AsyncOpenAI(
                base_url=url + "/v1", api_key=token, max_retries=0, http_client=http
            ) as c,
        ):
            done = await c.chat.completions.create(
                model="chatty", messages=[{"role": "user", "content": "hi"}]
            )
            assert done.choices[0].message.content
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(b.base_url + "/healthz")
