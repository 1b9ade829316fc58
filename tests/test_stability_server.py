"""The embedded server's Stability path as Stability's reference has it, and the client
against it: the headers the client names itself with, unknown form parts ignored, JSON
answers' content type, `x-request-id`, 429s without `Retry-After` (and the client's 60 s
assumption), error names, Ultra's input-image rules and its 10 MiB request limit."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from pipeline import version
from pipeline.errors import RetryableApiError
from pipeline.planning import apispec
from pipeline.planning.manifest import load_plan
from pipeline.planning.plan import Job
from pipeline.running.client import ApiClient
from pipeline.service.server import ServerOptions, running_server

KEY = "sk-STAB-server-0123456789-test"


def encoded(fmt: str = "png", size: tuple[int, int] = (640, 512),
            color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()


def plan_jobs(tmp_path: Path, text: str) -> tuple[Job, ...]:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text, encoding="utf-8")
    return load_plan(str(manifest), providers=(apispec.STABILITY,)).jobs


def form(**fields: str | bytes) -> aiohttp.FormData:
    """A multipart body as any client would make it: text fields, and bytes as file parts."""
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename=f"{name}.bin",
                           content_type="application/octet-stream")
        else:
            data.add_field(name, value)
    return data


async def post(url: str, data: aiohttp.FormData | bytes, accept: str = "image/*",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            url + apispec.STABILITY_ENDPOINT, data=data,
            headers={"Authorization": f"Bearer {KEY}", "Accept": accept, **(headers or {})},
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# -- item 10: the client names itself ---------------------------------------------------------

def test_every_stability_request_names_imagebatch_and_its_version(tmp_path):
    (tmp_path / "pick.png").write_bytes(encoded())
    jobs = plan_jobs(tmp_path, "version: 1\nname: h\njobs:\n  - id: text\n    prompt: a fox\n"
                               "    seeds: [1]\n  - id: more\n    prompt: p\n"
                               "    image: pick.png\n    strength: 0.5\n    seeds: [2]\n")

    async def scenario():
        # the first request is answered 500: the one sent again is a Stability request too
        options = ServerOptions(key=KEY, workers=1, keep_bodies=True, script={1: "500"})
        async with running_server(options) as srv, aiohttp.ClientSession() as session:
            client = ApiClient(session, srv.url, KEY, provider=apispec.STABILITY)
            with pytest.raises(RetryableApiError):
                await client.generate(jobs[0])
            for job in jobs:
                await client.generate(job)
            return srv.stats

    stats = asyncio.run(scenario())
    assert stats.requests == 3 and stats.by_status == {500: 1, 200: 2}
    for headers in stats.headers:
        assert headers["stability-client-id"] == "imagebatch"
        assert headers["stability-client-version"] == version() != ""
        assert not any(name.lower() == "authorization" for name in headers)  # never kept
        assert KEY not in json.dumps(headers)

