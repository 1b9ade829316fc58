"""Shared pieces of the cache tests: a real S3 endpoint on 127.0.0.1 (moto's server mode),
runs against the embedded image server, and a look at what a bucket holds."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runner_helpers import KEY

from imagebatch.planning.plan import Plan
from imagebatch.providers import connect
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.running.summary import RunReport
from imagebatch.service.server import ServerOptions
from imagebatch.storage.cache import Cache, open_cache

NAME = re.compile(r"^v1/[^/]+/([0-9a-f]{2})/([0-9a-f]{64})\.([0-9a-f]{64})\.(png|jpg)$")
CLAIM = re.compile(r"^(?:.+/)?claims/")
_buckets = itertools.count(1)


_PUTS = threading.Lock()


def _conditional_puts_atomic() -> None:
    """Make moto's PUT one step, as S3's is. moto checks If-None-Match, then writes, in
    whichever of its server's threads took the request: two writers at once could both be
    told they created the object (seen once in a whole run), where S3 lets the first win and
    answers the others 412. The cache's `put` and its claims rely on S3's way."""
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "serialized", False):
        return
    unserialized = S3Response.put_object

    def put_object(self: S3Response) -> object:
        with _PUTS:
            return unserialized(self)
    put_object.serialized = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign, assignment]


@dataclass
class S3:
    """A moto S3 server on 127.0.0.1, the environment that reaches it, and a boto3 client."""

    server: object
    endpoint: str
    port: int
    env: dict[str, str]

    def client(self):  # noqa: ANN201 - boto3's client type
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self) -> str:
        """A new empty bucket's name."""
        name = f"cache-{next(_buckets)}-{os.getpid()}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, *, claims: bool = False) -> dict[str, bytes]:
        """Every image object of `bucket` (and the claims too with `claims`): name -> bytes.

        A run cut off from the bucket cannot delete its claims; they lapse, and are not
        images."""
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])
                if claims or not CLAIM.match(o["Key"])]
        return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        """Start again on the same port (moto keeps its buckets in this process)."""
        from moto.server import ThreadedMotoServer

        _conditional_puts_atomic()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="module", name="s3")
def s3_fixture() -> Iterator[S3]:
    """One moto S3 endpoint on 127.0.0.1 for a test module; nothing reaches the internet."""
    from moto.server import ThreadedMotoServer

    _conditional_puts_atomic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    holder = S3(server, endpoint, port, env)
    try:
        yield holder
    finally:
        holder.server.stop()  # type: ignore[attr-defined]


@pytest.fixture(name="aws_env")
def aws_env_fixture(s3: S3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The S3 endpoint's variables in os.environ too (obstore reads them from there)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return dict(s3.env)


def api_options(**kw) -> ServerOptions:
    """The embedded image server as these tests use it: bodies kept, flat pictures.

    What the cache tests check (requests, keys, objects, claims, bytes restored) does not
    depend on what a picture shows: flat ones have the size, format and determinism of a
    landscape, made in a thread, with no render process to start."""
    kw.setdefault("flat", True)
    return ServerOptions(keep_bodies=True, workers=1, **kw)


async def run_with_cache(plan: Plan | list[Plan], url: str, out: Path, cache: Cache | None,
                         **kw) -> tuple[RunReport, str]:
    """One run of `plan` against the image server at `url` into `out`, with `cache`:
    (the report, what it printed on stderr)."""
    conn = connect.Connection(prefix="DIFFUSION", url=url, key=KEY)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("post", False)
    opts = RunOptions(manifests=(), out=out, rpm=0, **kw)
    err = io.StringIO()
    plans = plan if isinstance(plan, list) else [plan]
    report = await run_plans(plans, conn, opts, err, cache=cache)
    return report, err.getvalue()


def opened(url: str, env: dict[str, str]) -> Cache:
    """The cache at `url`, opened as `run` opens it."""
    return open_cache(url, env)


def images(root: Path) -> dict[str, bytes]:
    """Every image under `root`/images: relative path -> bytes."""
    base = root / "images"
    return {p.relative_to(base).as_posix(): p.read_bytes()
            for p in sorted(base.rglob("*")) if p.is_file()}


async def wait_for_lines(path: Path, lines: int) -> None:
    """Until the file at `path` has at least `lines` lines (a run's results.jsonl)."""
    def count() -> int:
        return len(path.read_bytes().splitlines()) if path.exists() else 0

    # a file another process (or thread) writes: there is no event to wait on
    while await asyncio.to_thread(count) < lines:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def check_names(objects: dict[str, bytes], prefix: str = "") -> None:
    """Every object name is a final one whose recorded SHA-256 is its bytes' (no partial or
    stray object)."""
    for name, data in objects.items():
        match = NAME.match(name.removeprefix(prefix))
        assert match is not None, name
        assert match.group(2).startswith(match.group(1))
        assert hashlib.sha256(data).hexdigest() == match.group(3), name
