"""Content Credentials' cost, side by side in one run: exporting 200 picks (two formats, one
width) signed against the same export unsigned, and the bytes a manifest adds per file as
exports sign (no thumbnails) and with thumbnails (the file's and its parent's).

The chain is made here with `cryptography` (a CA and a leaf, as the tests make it); both
exports run as subprocesses on the same sources, written through the Store as a run writes
them, into bench/.work/credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bench import measure, row
from bench.bench_export import _fresh, _manifest, _sources

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "credentials"
SMALL = bool(os.environ.get("BENCH_CREDENTIALS_SMALL"))  # a quick smoke run of this module
N_IMAGES = 10 if SMALL else 200
SIDE = 1024
WIDTH = 480
IMAGEBATCH = str(Path(sys.executable).parent / "imagebatch")


def _row(metric: str, value: float, unit: str, target: str | None = None,
         ok: bool | None = None, note: str = "") -> dict:
    return row("credentials", metric, value, unit, target, ok, note)


def _chain(folder: Path) -> dict[str, str]:
    """The signing variables for a fresh test chain kept in `folder`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from credential_helpers import make_chain  # the tests' own chain

    chain, key = make_chain("imagebatch bench signer")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(chain)
    (folder / "key.pem").write_bytes(key)
    return {"IMAGEBATCH_C2PA_CERT": str(folder / "cert.pem"),
            "IMAGEBATCH_C2PA_KEY": str(folder / "key.pem")}


def _export(manifest: Path, out: Path, assets: Path, env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, total bytes of the files) of one export with `env` set."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wall, _, _ = measure([IMAGEBATCH, "export", str(manifest), "--out", str(out),
                              "--assets", str(assets)])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    doc = json.loads((assets / manifest.stem / "assets.json").read_text())
    return wall, sum(int(f["bytes"]) for f in doc["files"])


def _rows() -> list[dict]:
    rows: list[dict] = []
    exports = (f"  - path: \"{{seed}}-{{width}}.{{format}}\"\n    width: {WIDTH}\n"
               "    format: [webp, jpeg]\n")
    manifest = _manifest(WORK / "manifests", "signed", N_IMAGES, exports)
    out = WORK / "outputs"
    _sources(manifest, out, SIDE)
    env = _chain(WORK / "keys")
    plain_s, plain_bytes = _export(manifest, out, _fresh(WORK / "assets-plain"), {})
    signed_s, signed_bytes = _export(manifest, out, _fresh(WORK / "assets-signed"), env)
    files = 2 * N_IMAGES
    rows.append(_row(f"export {N_IMAGES} picks x (WebP, JPEG) {WIDTH}px: unsigned", plain_s,
                     "s", note=f"{files} files"))
    rows.append(_row(f"export {N_IMAGES} picks: signed (C2PA, ES256)", signed_s, "s",
                     note=f"{files} files, each with its parent ingredient"))
    ratio = signed_s / plain_s
    rows.append(_row("export: signed / unsigned (time)", ratio, "x", "<= 3", ratio <= 3))
    rows.append(_row("bytes added per file: manifest without thumbnail (as exported)",
                     (signed_bytes - plain_bytes) / files, "B",
                     note=f"{plain_bytes / files / 1024:.1f} KB per unsigned file"))
    rows.append(_row("bytes added per file: manifest with thumbnails",
                     _with_thumbnail(WORK / "assets-plain" / "signed", out, env), "B",
                     note="the same files signed in-process with the file's and its "
                          "parent's thumbnails (20 files)"))
    return rows


def _with_thumbnail(plain: Path, out: Path, env: dict[str, str]) -> float:
    """Mean bytes a manifest with thumbnails adds to the first 20 unsigned files."""
    from imagebatch.storage import credentials, metadata

    signer = credentials.signer_from_env(env)
    assert signer is not None
    doc = json.loads((plain / "assets.json").read_text())
    added = []
    for entry in doc["files"][:20]:
        data = (plain / entry["file"]).read_bytes()
        source = (out / "signed" / "images" / entry["source"]["path"]).read_bytes()
        signed = credentials.sign_export(
            data, entry["format"], signer, title=entry["file"],
            parent=(source, metadata.format_of(source), entry["source"]["path"]),
            actions=("c2pa.resized", "c2pa.transcoded"), thumbnail=True)
        added.append(len(signed) - len(data))
    return sum(added) / len(added)


def run() -> list[dict]:
    """Signed against unsigned exports, and the bytes a manifest adds."""
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        return _rows()
    except Exception as exc:  # noqa: BLE001 - an error row, not a missing table
        return [_row("error", float("nan"), "", None, False,
                     f"{type(exc).__name__}: {str(exc)[:300]}")]
    finally:
        shutil.rmtree(WORK / "keys", ignore_errors=True)


if __name__ == "__main__":
    for r in run():
        print(r)
