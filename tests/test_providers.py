"""The provider seam: one module per provider behind one class, a registry the built-in
providers register in as a new one would, and nobody outside providers/ naming one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagebatch.errors import AuthError, ConfigError, PermanentApiError, RetryableApiError
from imagebatch.planning import apispec
from imagebatch.planning.manifest import load_plan
from imagebatch.providers import base, connect, default, get, names, register
from imagebatch.providers.heroku import HEROKU
from imagebatch.providers.stability import STABILITY

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def test_nothing_outside_providers_compares_a_providers_name():
    pattern = re.compile(r'"stability"|"heroku"|"bedrock"|\bSTABILITY\b|\bHEROKU\b|\bBEDROCK\b')
    found = []
    for path in PIPELINE.rglob("*.py"):
        if "providers" in path.relative_to(PIPELINE).parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'", "f\"")):
                found.append(f"{path.relative_to(PIPELINE)}:{n}: {line.strip()}")
    assert found == []


def test_the_built_in_providers_register_as_a_fourth_would(tmp_path):
    assert names()[:2] == ("heroku", "stability") and default() is HEROKU
    assert get("Stability") is STABILITY and apispec.default_provider() is HEROKU

    class Echo(base.Provider):
        name = "echo-test"
        fields = frozenset({"prompt", "aspect_ratio", "seed"})
        hosts = ("echo.example",)

        def key_body(self, request):
            return {**request, "provider": self.name}

    echo = register(Echo())
    try:
        assert get("echo-test") is echo
        env = {"P_URL": "https://api.echo.example", "P_KEY": "k-123456"}
        assert connect.connection(env, "P").provider is echo
        path = tmp_path / "m.yaml"
        path.write_text("version: 1\nname: e\njobs:\n  - id: a\n    prompt: p\n"
                        "    seeds: [1]\n", encoding="utf-8")
        (job,) = load_plan(str(path), providers=(echo,)).jobs
        assert job.provider is echo and job.request["provider"] == "echo-test"
        with pytest.raises(Exception, match="the echo-test provider has no `size`"):
            path.write_text("version: 1\nname: e\njobs:\n  - id: a\n    prompt: p\n"
                            "    size: 1024x1024\n    seeds: [1]\n", encoding="utf-8")
            load_plan(str(path), providers=(echo,))
    finally:
        from imagebatch import providers

        del providers._registered["echo-test"]
    with pytest.raises(ConfigError, match="P_PROVIDER is 'nope': use one of heroku, stab"):
        connect.connection({"P_PROVIDER": "nope"}, "P")
    with pytest.raises(ValueError, match="already registered"):
        register(HEROKU)


@pytest.mark.parametrize(("provider", "status", "error", "kind", "wait"), [
    (HEROKU, 401, AuthError, "auth", None),
    (HEROKU, 403, PermanentApiError, "permanent", None),
    (HEROKU, 400, PermanentApiError, "permanent", None),
    (HEROKU, 429, RetryableApiError, "http", 3.0),
    (HEROKU, 503, RetryableApiError, "http", 3.0),
    (STABILITY, 401, AuthError, "auth", None),
    (STABILITY, 402, AuthError, "payment", None),
    (STABILITY, 403, PermanentApiError, "moderation", None),
    (STABILITY, 413, PermanentApiError, "permanent", None),
    (STABILITY, 429, RetryableApiError, "http", 3.0),
])
def test_what_each_status_means(provider, status, error, kind, wait):
    raw = b'{"id": "x", "name": "some_name", "errors": ["it went wrong"]}'
    got = provider.status_error(status, raw, {}, "P_KEY", 3.0)
    assert type(got) is error and got.kind == kind
    if isinstance(got, RetryableApiError):
        assert got.retry_after == wait
    # Stability's 429 without a Retry-After is its 60 s lockout; Heroku's has no default
    assert STABILITY.status_error(429, b"", {}, "P_KEY", None).retry_after == 60.0
    assert HEROKU.status_error(429, b"", {}, "P_KEY", None).retry_after is None


def test_how_each_provider_shapes_its_request_and_reads_its_answer(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nname: e\njobs:\n  - id: a\n    prompt: p\n"
                    "    seeds: [1]\n", encoding="utf-8")
    (heroku,) = load_plan(str(path)).jobs
    (stab,) = load_plan(str(path), providers=(STABILITY,)).jobs
    out = HEROKU.request(heroku, "https://h", "inf-1234", "image/*")
    assert out.url == "https://h/v1/images/generations" and out.body == heroku.body.encode()
    assert out.headers["Authorization"] == "Bearer inf-1234"
    out = STABILITY.request(stab, "https://s", "sk-1234", "image/*")
    assert out.url == "https://s/v2beta/stable-image/generate/ultra"
    assert out.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="provider"' not in out.body and b'name="model"' not in out.body
    assert HEROKU.answer(b'{"created": 5, "data": [{"b64_json": "QUJD"}]}', "application/json",
                         {}) == base.Answer(b64="QUJD", created=5)
    assert STABILITY.answer(b"PNG", "image/png", {"finish-reason": "SUCCESS", "seed": "9"}) \
        == base.Answer(data=b"PNG", seed=9)
    with pytest.raises(PermanentApiError, match="content filtered"):
        STABILITY.answer(b"PNG", "image/png", {"finish-reason": "CONTENT_FILTERED"})
    assert STABILITY.key_body({"prompt": "p"}) == {"prompt": "p", "provider": "stability"}
    assert HEROKU.key_body({"prompt": "p"}) == {"prompt": "p"}
