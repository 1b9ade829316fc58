"""The AI marker in every image, signed Content Credentials, and provider-signed images kept
intact: written through the store and the export as a run writes them, read back by
decoding, by c2pa's own Reader and by ExifTool."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from credential_helpers import (
    UNTRUSTED,
    actions_of,
    exiftool_source_type,
    make_chain,
    manifest_of,
    signer,
    signing_env,
)
from PIL import Image
from runner_helpers import make_job

from imagebatch.cli import main
from imagebatch.planning.manifest import load_plan
from imagebatch.running import cache as cached
from imagebatch.service.render import encode as render_encode
from imagebatch.service.render import render_image
from imagebatch.storage import credentials, metadata
from imagebatch.storage.cache import open_cache
from imagebatch.storage.store import RESULTS, Store, read_records

MARKER = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
FORMATS = ["png", "jpeg", "webp", "avif"]
# What the APIs serve (Heroku: png, jpeg; Stability: png, jpeg, webp): AVIF is an export
# format only, and an AVIF original is met only signed by its provider (kept as it is).
SERVED = ["png", "jpeg", "webp"]
MANIFEST = """\
version: 1
name: cc
jobs:
  - id: fox
    prompt: "A fox in the snow"
    seeds: [1]
  - id: owl
    prompt: "An owl at night"
    seeds: [1]
    output_format: jpeg
exports:
  - name: web
    from: all
    path: "{id}/{seed}-{width}.{format}"
    width: 256
    format: [png, jpeg, webp, avif]
  - name: square
    from: all
    path: "sq/{id}-{seed}.{format}"
    size: 128x96
    format: png
"""




@functools.lru_cache(maxsize=1)
def _lighthouse() -> Image.Image:
    """The placeholder `picture` encodes, rendered once (~45 ms a render); never changed."""
    return render_image({"prompt": "a lighthouse"}, 7)


def picture(fmt: str, size: tuple[int, int] = (320, 240)) -> bytes:
    """A rendered placeholder (what the embedded server serves), encoded as `fmt`."""
    img = _lighthouse().resize(size)
    buf = io.BytesIO()
    img.save(buf, {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}.get(fmt, "PNG"))
    return buf.getvalue()


def save(out: Path, fmt: str, data: bytes, *, sign: credentials.SignerConfig | None = None,
         job=None) -> tuple[Path, object]:
    """Save `data` as a run does (through Store.save); (its path, its record)."""
    job = job or make_job(fmt="jpeg" if fmt == "jpeg" else "png", prompt=f"a {fmt} fox")
    store = Store(out, "demo", "local", signer=sign)
    store.prepare()
    try:
        rec = store.save(job, data, attempts=1, seconds=0.0, created=None)
    finally:
        store.close()
    return out / "demo" / "images" / job.path, rec


def exiftool_source_types(paths: list[Path]) -> dict[Path, str | None]:
    """exiftool_source_type of every file in `paths`, read by one ExifTool process (each
    start of its Perl costs ~0.13 CPU-s)."""
    tool = shutil.which("exiftool")
    if tool is None:
        exiftool_source_type(paths[0])  # skips, or fails under CI, as for one file
    out = subprocess.run([str(tool), "-j", "-XMP-iptcExt:DigitalSourceType", *map(str, paths)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    found = {d["SourceFile"]: d.get("DigitalSourceType") for d in json.loads(out)}
    return {p: None if found[str(p)] is None else str(found[str(p)]) for p in paths}


def run_and_export(tmp_path: Path, env: dict[str, str] | None, monkeypatch,
                   capsys) -> tuple[Path, Path]:
    """`run` against the embedded server, then `export`; (outputs root, export root)."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    manifest = tmp_path / "cc.yaml"
    manifest.write_text(MANIFEST)
    out, assets = tmp_path / "out", tmp_path / "assets"
    assert main(["run", str(manifest), "--out", str(out), "--no-post"]) == 0
    assert main(["export", str(manifest), "--out", str(out), "--assets", str(assets)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return out / "cc", assets / "cc"


# ---- the marker, always ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SERVED)
def test_an_original_carries_the_marker_beside_its_request(tmp_path, fmt):
    job = make_job(prompt="a marked fox")
    path, _ = save(tmp_path, fmt, picture(fmt), job=job)
    data = path.read_bytes()
    assert metadata.source_type(data) == MARKER
    assert metadata.extract(data) == job.body
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # still decodes
    assert exiftool_source_type(path) == MARKER


def test_run_and_export_mark_every_file_in_four_formats(tmp_path, monkeypatch, capsys):
    root, exported = run_and_export(tmp_path, None, monkeypatch, capsys)
    originals = sorted((root / "images").rglob("*.*"))
    files = sorted(p for p in exported.rglob("*.*") if p.suffix not in (".json", ".lock"))
    assert {p.suffix for p in files} == {".png", ".jpeg", ".webp", ".avif"}
    read_by_exiftool = exiftool_source_types([*originals, *files])
    for path in [*originals, *files]:
        assert metadata.source_type(path.read_bytes()) == MARKER, path
        assert read_by_exiftool[path] == MARKER, path
    entries = json.loads((exported / "assets.json").read_text())["files"]
    assert all(e["digital_source_type"] == MARKER and e["content_credentials"] is None
               for e in entries)


def test_metadata_strip_leaves_the_request_out_but_not_the_marker(tmp_path, monkeypatch, capsys):
    manifest = MANIFEST.replace("    format: [png, jpeg, webp, avif]\n",
                                "    format: [png, jpeg, webp, avif]\n    metadata: strip\n")
    (tmp_path / "cc.yaml").write_text(manifest)
    out, assets = tmp_path / "out", tmp_path / "assets"
    assert main(["run", str(tmp_path / "cc.yaml"), "--out", str(out), "--no-post"]) == 0
    assert main(["export", str(tmp_path / "cc.yaml"), "--out", str(out), "--assets",
                 str(assets)]) == 0
    for fmt in FORMATS:
        data = (assets / "cc" / "fox" / f"1-256.{fmt}").read_bytes()
        assert metadata.extract(data) is None
        assert metadata.source_type(data) == MARKER


def test_show_keeps_its_body_and_prints_provenance_when_asked(tmp_path, capsys):
    job = make_job(prompt="a shown fox")
    path, _ = save(tmp_path, "png", picture("png"), job=job)
    capsys.readouterr()
    assert main(["show", str(path)]) == 0
    assert capsys.readouterr().out.strip() == job.body  # the body to send again, unchanged
    assert main(["show", "--credentials", str(path)]) == 0
    compact = capsys.readouterr().out
    assert compact.count("\n") == 1
    doc = json.loads(compact)
    assert doc["digital_source_type"] == MARKER and doc["content_credentials"] is None
    assert doc["request"] == json.loads(job.body)
    assert main(["show", "--credentials", "--pretty", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == doc


# ---- signing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SERVED)
def test_an_original_is_signed_last_and_validates(tmp_path, fmt):
    job = make_job(prompt="a confidential fox")
    path, rec = save(tmp_path, fmt, picture(fmt), sign=signer(tmp_path), job=job)
    data = path.read_bytes()
    state, failures, active = manifest_of(data, fmt)
    assert failures == [UNTRUSTED] and state == "Valid"  # intact; a self-issued signer
    (created,) = actions_of(active)
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == MARKER
    assert created["softwareAgent"]["name"] == "stable-image-ultra (the embedded server)"
    (mine,) = [a["data"] for a in active["assertions"] if a["label"] == "org.imagebatch.job"]
    assert mine == {"key": job.key}  # no prompt unless IMAGEBATCH_C2PA_PROMPT=1
    assert "confidential" not in json.dumps(active)
    assert metadata.source_type(data) == MARKER  # the marker and request survive signing
    assert rec.credential == "valid" and rec.signed_by == "imagebatch"
    broken = bytearray(data)
    broken[len(broken) // 2] ^= 0x01  # one byte changed in a signed file
    state, failures, _ = manifest_of(bytes(broken), fmt)
    assert state == "Invalid" and set(failures) - {UNTRUSTED}


def test_the_prompt_goes_in_only_when_asked(tmp_path):
    chain, key = make_chain()
    asked = credentials.SignerConfig("es256", chain, key, prompt=True)
    path, _ = save(tmp_path, "png", picture("png"), sign=asked)
    _, _, active = manifest_of(path.read_bytes(), "png")
    (mine,) = [a["data"] for a in active["assertions"] if a["label"] == "org.imagebatch.job"]
    assert mine["prompt"] == "a png fox"


def test_run_and_export_sign_every_file_with_its_parent(tmp_path, monkeypatch, capsys):
    env = signing_env(tmp_path)
    root, exported = run_and_export(tmp_path, env, monkeypatch, capsys)
    recs = list(read_records(root / RESULTS))
    assert {(r.credential, r.signed_by) for r in recs} == {("valid", "imagebatch")}
    entries = {e["file"]: e for e in json.loads((exported / "assets.json").read_text())["files"]}
    assert len(entries) == 10
    for name, entry in entries.items():
        fmt = entry["format"]
        data = (exported / name).read_bytes()
        state, failures, active = manifest_of(data, fmt)
        assert (state, failures) == ("Valid", [UNTRUSTED]), name
        assert entry["content_credentials"] == "valid"
        done = [a["action"] for a in actions_of(active)]
        assert done[0] == "c2pa.opened"
        source_fmt = "jpeg" if name.startswith(("owl", "sq/owl")) else "png"
        if name.startswith("sq/"):
            assert "c2pa.cropped" in done and "c2pa.resized" in done
        else:
            assert "c2pa.resized" in done and "c2pa.cropped" not in done
        assert ("c2pa.transcoded" in done) == (fmt != source_fmt)
        (parent,) = active["ingredients"]
        assert parent["relationship"] == "parentOf"
        assert parent["title"] == Path(entry["source"]["path"]).name
        assert parent.get("active_manifest")  # the original's own signed manifest
    capsys.readouterr()
    assert main(["export", str(tmp_path / "cc.yaml"), "--out", str(tmp_path / "out"),
                 "--assets", str(tmp_path / "assets"), "--check"]) == 0
    assert "10 of 10 files pass" in capsys.readouterr().out
    # the credential as `show` reports it
    assert main(["show", "--credentials", str(exported / "fox" / "1-256.webp")]) == 0
    shown = json.loads(capsys.readouterr().out)["content_credentials"]
    assert shown["state"] == "valid" and shown["signer"].startswith("imagebatch test signer")
    assert shown["actions"][0] == "c2pa.opened"
    assert shown["ingredients"][0]["relationship"] == "parentOf"


def test_check_fails_on_a_changed_byte_and_on_a_missing_marker(tmp_path, monkeypatch, capsys):
    env = signing_env(tmp_path)
    _, exported = run_and_export(tmp_path, env, monkeypatch, capsys)
    entries = json.loads((exported / "assets.json").read_text())["files"]
    target = exported / entries[0]["file"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    argv = ["export", str(tmp_path / "cc.yaml"), "--out", str(tmp_path / "out"), "--assets",
            str(tmp_path / "assets"), "--check"]
    assert main(argv) == 1
    assert f"FAILED {entries[0]['file']}" in capsys.readouterr().err
    # a file whose record matches but which carries no marker (nor credential)
    monkeypatch.delenv(credentials.ENV_CERT)
    monkeypatch.delenv(credentials.ENV_KEY)
    shutil.rmtree(tmp_path / "assets")
    assert main(argv[:-1]) == 0  # made again, unsigned
    entries = json.loads((exported / "assets.json").read_text())["files"]
    assert main(argv) == 0
    plain = exported / entries[1]["file"]
    img = Image.open(plain)
    buf = io.BytesIO()
    img.save(buf, img.format)  # Pillow writes no XMP of its own: the marker is gone
    plain.write_bytes(buf.getvalue())
    entries[1]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (exported / "assets.json").write_text(json.dumps({"version": 1, "files": entries}))
    capsys.readouterr()
    assert main(argv) == 1
    assert "carries no AI marker" in capsys.readouterr().err


def test_signing_without_the_extra_stops_before_sending(tmp_path, monkeypatch, capsys):
    env = signing_env(tmp_path)
    monkeypatch.setitem(sys.modules, "c2pa", None)  # as if c2pa-python were not installed
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "cc.yaml").write_text(MANIFEST)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "cc.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'imagebatch[c2pa]'" in err and "Traceback" not in err
    assert "embedded local server" not in err  # no server started: nothing was sent
    assert not (tmp_path / "out" / "cc" / RESULTS).exists()
    assert main(["export", str(tmp_path / "cc.yaml"), "--out", str(tmp_path / "out"),
                 "--assets", str(tmp_path / "assets")]) == 2
    assert "imagebatch[c2pa]" in capsys.readouterr().err
    assert not (tmp_path / "assets").exists()


def test_keys_and_certificates_never_show(tmp_path, monkeypatch, capsys):
    env = signing_env(tmp_path)
    key = env[credentials.ENV_KEY]
    chain = Path(env[credentials.ENV_CERT]).read_text()
    secrets = [line for line in (key + chain).splitlines()
               if line and not line.startswith("-----")]
    root, exported = run_and_export(tmp_path, env, monkeypatch, capsys)
    shown = []
    for path in [*root.rglob("*.json*"), *exported.rglob("*.json")]:
        shown.append(path.read_text())
    monkeypatch.setenv(credentials.ENV_KEY, key.replace("A", "B", 3)[:200])  # a broken key
    assert main(["run", str(tmp_path / "cc.yaml"), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    shown += [captured.out, captured.err]
    assert credentials.ENV_KEY in captured.err
    assert not [s for s in secrets for text in shown if s in text]
    assert "key=" not in repr(credentials.signer_from_env(env))


@pytest.mark.parametrize("kind,alg", [("ec384", "es384"), ("ed25519", "ed25519"),
                                      ("rsa", "ps256")])
def test_the_algorithm_comes_from_the_key(tmp_path, kind, alg):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = {"ec384": lambda: ec.generate_private_key(ec.SECP384R1()),
           "ed25519": ed25519.Ed25519PrivateKey.generate,
           "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}[kind]()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    chain, _ = make_chain()
    got = credentials.signer_from_env({credentials.ENV_CERT: chain.decode(),
                                       credentials.ENV_KEY: pem})
    assert got is not None and got.alg == alg


# ---- a provider's credential -----------------------------------------------------------------

def test_a_provider_signed_image_is_kept_byte_for_byte_through_save_cache_and_export(
        tmp_path, monkeypatch, capsys):
    provider = signer(tmp_path, "provider test signer")
    plan_file = tmp_path / "cc.yaml"
    plan_file.write_text(MANIFEST)
    plan = load_plan(str(plan_file))
    job = plan.jobs[0]  # fox: png
    served = credentials.sign_image(render_encode(render_image(job.request, job.seed), "png"),
                                    "png", provider)
    assert manifest_of(served, "png")[1] == [UNTRUSTED]

    store = Store(tmp_path / "out", "cc", "local")
    store.prepare()
    try:
        rec = store.save(job, served, attempts=1, seconds=0.0, created=None)
    finally:
        store.close()
    path = tmp_path / "out" / "cc" / "images" / job.path
    assert path.read_bytes() == served  # not a byte added: the signature still holds
    assert (rec.credential, rec.signed_by) == ("valid", "provider")
    assert json.loads(metadata.sidecar(path).read_text()) == job.request
    capsys.readouterr()
    assert main(["show", str(path)]) == 0
    assert capsys.readouterr().out.strip() == job.body

    # through the shared cache: uploaded, then restored into another outputs folder
    (tmp_path / "cache").mkdir()
    cache = open_cache(str(tmp_path / "cache"), {})
    err = io.StringIO()

    async def round_trip() -> Store:
        transfers = cached.Transfers(cache, err)
        assert await cached.upload(transfers, store, job, rec) == "uploaded"
        other = Store(tmp_path / "elsewhere", "cc", "local")
        other.prepare()
        try:
            await cached.load_index(transfers, [other])
            assert await cached.restore(transfers, other, [job]) == {job.key}
        finally:
            other.close()
        return other

    asyncio.run(round_trip())
    assert err.getvalue() == ""
    restored = tmp_path / "elsewhere" / "cc" / "images" / job.path
    assert restored.read_bytes() == served
    assert json.loads(metadata.sidecar(restored).read_text()) == job.request
    (restored_rec,) = read_records(tmp_path / "elsewhere" / "cc" / RESULTS)
    assert (restored_rec.credential, restored_rec.signed_by) == ("valid", "provider")

    # exported with the team's own certificate: the provider's image is the parent
    (tmp_path / "cc.yaml").write_text(MANIFEST.replace(
        "    format: [png, jpeg, webp, avif]\n", "    format: webp\n"))
    for name, value in signing_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    assert main(["export", str(plan_file), "--out", str(tmp_path / "out"),
                 "--assets", str(tmp_path / "assets")]) == 1  # owl was never made
    data = (tmp_path / "assets" / "cc" / "fox" / "1-256.webp").read_bytes()
    state, failures, active = manifest_of(data, "webp")
    assert (state, failures) == ("Valid", [UNTRUSTED])
    (parent,) = active["ingredients"]
    assert parent["relationship"] == "parentOf" and parent.get("active_manifest")
    assert (parent.get("validation_results") or {}).get("activeManifest", {}).get(
        "failure", [{}])[0].get("code") == UNTRUSTED


@pytest.mark.parametrize("fmt", FORMATS)
def test_sign_image_signs_a_rendered_image_that_save_keeps_as_it_is(tmp_path, fmt):
    """sign_image is what the embedded server's signing option calls on each placeholder."""
    rendered = picture(fmt)
    served = credentials.sign_image(rendered, fmt, signer(tmp_path, "provider test signer"))
    state, failures, active = manifest_of(served, fmt)
    assert (state, failures) == ("Valid", [UNTRUSTED])
    (created,) = actions_of(active)
    assert created["action"] == "c2pa.created" and created["digitalSourceType"] == MARKER
    with Image.open(io.BytesIO(served)) as a, Image.open(io.BytesIO(rendered)) as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()  # the pixels as rendered
    path, rec = save(tmp_path, fmt, served)
    assert path.read_bytes() == served
    assert (rec.credential, rec.signed_by) == ("valid", "provider")


def test_merge_carries_the_request_of_a_provider_signed_image(tmp_path, capsys):
    from imagebatch.commands.merge import merge_command

    plan_file = tmp_path / "cc.yaml"
    plan_file.write_text(MANIFEST)
    plan = load_plan(str(plan_file))
    fox, owl = plan.jobs
    store = Store(tmp_path / "shard1", "cc", "local")
    store.prepare()
    try:
        served = credentials.sign_image(picture("png"), "png", signer(tmp_path))
        store.save(fox, served, attempts=1, seconds=0.0, created=None)
        store.save(owl, picture("jpeg"), attempts=1, seconds=0.0, created=None)
    finally:
        store.close()
    report = merge_command([str(tmp_path / "shard1")], str(tmp_path / "merged"),
                           manifests=[str(plan_file)], post=False)
    assert report.failed == 0
    merged = tmp_path / "merged" / "cc" / "images" / fox.path
    assert merged.read_bytes() == served
    assert metadata.read_request(merged) == fox.request
    assert not metadata.sidecar(tmp_path / "merged" / "cc" / "images" / owl.path).exists()


async def test_signing_without_the_extra_sends_no_request_to_a_real_server(tmp_path,
                                                                          monkeypatch):
    from runner_helpers import KEY, make_plan

    from imagebatch.errors import ConfigError
    from imagebatch.providers import connect
    from imagebatch.running.options import RunOptions
    from imagebatch.running.run import run_plans
    from imagebatch.service.server import ServerOptions, running_server

    env = signing_env(tmp_path)
    monkeypatch.setitem(sys.modules, "c2pa", None)  # as if c2pa-python were not installed
    async with running_server(ServerOptions(key=KEY, workers=1, flat=True)) as srv:
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=0)
        with pytest.raises(ConfigError, match=r"imagebatch\[c2pa\]") as caught:
            await run_plans([make_plan(3)], conn, opts, io.StringIO(), env=env)
        assert caught.value.exit_code == 2
        assert srv.stats.requests == 0  # counted as the server received them


async def test_the_embedded_server_signs_what_it_serves_and_run_keeps_it(tmp_path, monkeypatch):
    # serve --sign: the provider-signed path rehearsed offline, through a real run
    from runner_helpers import KEY, make_plan

    from imagebatch.providers import connect
    from imagebatch.running.options import RunOptions
    from imagebatch.running.run import run_plans
    from imagebatch.service.server import ServerOptions, running_server

    provider = signer(tmp_path, "embedded server test signer")
    plan = make_plan(2, name="sg")
    async with running_server(ServerOptions(key=KEY, workers=1, flat=True,
                                            signer=provider)) as srv:
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False)
        report = await run_plans([plan], conn, opts, io.StringIO(), env={})
        assert srv.stats.requests == 2
    assert report.plans[0].succeeded == 2
    records = [json.loads(line) for line in
               (tmp_path / "out" / "sg" / "results.jsonl").read_text().splitlines()]
    assert [(r["credential"], r["signed_by"]) for r in records] == [("valid", "provider")] * 2
    for job in plan.jobs:
        data = (tmp_path / "out" / "sg" / "images" / job.path).read_bytes()
        assert manifest_of(data, "png")[1] == [UNTRUSTED]  # intact: only the untrusted signer
