"""`imagebatch export`: files made from images on disk, checked by decoding them.

Sources are written through the Store (as a run writes them) so that the project's own
definition of done decides what can be exported; one test runs the whole path against the
embedded server.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, features

from imagebatch.assets import export as export_mod
from imagebatch.cli import main
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Plan
from imagebatch.storage.picks import picks_path, update_picks
from imagebatch.storage.store import Store

JOBS = """\
version: 1
name: shop
jobs:
  - id: a
    prompt: "Apple"
    seeds: [1]
  - id: b
    prompt: "Boat"
    seeds: [1]
  - id: c
    prompt: "Cloud"
    seeds: [1]
"""
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# sRGB's colorants (D50), for an ICC profile whose red and green are swapped
SRGB_R, SRGB_G, SRGB_B = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), \
    (0.1431, 0.0606, 0.7141)


class Shop:
    """A manifest with exports, its outputs folder and export root, all under tmp_path."""

    def __init__(self, tmp_path: Path, exports: str, jobs: str = JOBS) -> None:
        self.tmp = tmp_path
        self.manifest = tmp_path / "shop.yaml"
        self.out = tmp_path / "out"
        self.assets = tmp_path / "assets"
        self.root = self.assets / "shop"
        self.write(exports, jobs)

    def write(self, exports: str, jobs: str = JOBS) -> None:
        self.manifest.write_text(jobs + "exports:\n" + textwrap.indent(
            textwrap.dedent(exports), "  "), encoding="utf-8")
        self.plan: Plan = load_plan(str(self.manifest))

    def put(self, path: str, img: Image.Image, fmt: str = "PNG", **save: object) -> None:
        """Store an image for the job at `path` as a run would (embedded request, ok record)."""
        buf = io.BytesIO()
        img.save(buf, fmt, **save)
        self.put_bytes(path, buf.getvalue())

    def put_bytes(self, path: str, data: bytes) -> None:
        job = next(j for j in self.plan.jobs if j.path == path)
        store = Store(self.out, self.plan.name, "local")
        store.prepare()
        try:
            store.save(job, data, attempts=1, seconds=0.0, created=None)
        finally:
            store.close()

    def pick(self, **changes: tuple[str | None, int | None] | None) -> None:
        update_picks(picks_path(self.manifest), self.plan,
                     {f"{k}/1.png": v for k, v in changes.items()})

    def export(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["export", str(self.manifest), "--out", str(self.out), "--assets",
                     str(self.assets), *extra])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return code, captured.out, captured.err

    def assets_json(self) -> dict:
        return json.loads((self.root / "assets.json").read_text())

    def files(self) -> dict[str, str]:
        """file -> sha256 of every file of the export root but its bookkeeping."""
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.name.startswith(".imagebatch-export")}

    def stamps(self) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns
                for p in self.root.rglob("*")
                if p.is_file() and not p.name.startswith(".imagebatch-export")}


def scene(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A picture with structure (gradient, shapes) so encoders have something to do."""
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    for k in range(5):
        x, y = (seed * 97 + k * 211) % w, (seed * 53 + k * 131) % h
        draw.ellipse((x - 40, y - 40, x + 40, y + 40), fill=((k * 60 + seed) % 256, 120, 200))
    return img


def marker_source(size: tuple[int, int], at: tuple[int, int], radius: int = 20) -> Image.Image:
    img = Image.new("RGB", size, WHITE)
    x, y = at
    ImageDraw.Draw(img).ellipse((x - radius, y - radius, x + radius, y + radius), fill=RED)
    return img


def red_centroid(img: Image.Image) -> tuple[float, float]:
    rgb = img.convert("RGB")
    w, h = rgb.size
    px = rgb.load()
    pts = [(x, y) for y in range(h) for x in range(w)
           if px[x, y][0] > 200 and px[x, y][1] < 80 and px[x, y][2] < 80]
    assert pts, "no red marker in the image"
    return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    # a pixel may carry alpha beside an RGB colour: the channels both have are compared
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=False))


def decode(path: Path) -> Image.Image:
    """The file decoded in full (an error if any byte is wrong), keeping its format's name."""
    with Image.open(path) as img:
        img.load()
        out = img.copy()
        out.format = img.format  # type: ignore[misc]
        return out


# ---- pixels ----------------------------------------------------------------------------------

def test_widths_keep_the_aspect_and_every_file_decodes(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - name: web
          path: "{id}/{seed}-{width}w.{format}"
          width: [800, 400, 2000]
          format: [webp, jpeg, png, avif]
        """)
    shop.put("a/1.png", scene((1344, 768)))
    shop.pick(a=("pick", None))
    code, out, _ = shop.export(capsys)
    assert code == 0, out
    doc = shop.assets_json()
    assert doc["version"] == 1
    files = doc["files"]
    assert [f["file"] for f in files] == sorted(f["file"] for f in files)
    assert {(f["width"], f["height"]) for f in files} == {(800, 457), (400, 229), (1344, 768)}
    assert len(files) == 12  # 2000 is above the source's width: written at 1344, once
    pil = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "avif": "AVIF"}
    for f in files:
        path = shop.root / f["file"]
        data = path.read_bytes()
        assert (f["bytes"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        img = decode(path)
        assert img.format == pil[f["format"]] and img.size == (f["width"], f["height"])
        assert abs(img.size[0] / img.size[1] - 1344 / 768) < 0.01
        assert f["export"] == "web" and f["source"]["path"] == "a/1.png"
        assert f["source"]["seed"] == 1 and f["source"]["key"] == shop.plan.jobs[0].key
        assert f["file"] == f"a/1-{f['width']}w.{f['format']}"
    assert "12 files written" in out


def test_cover_keeps_the_focus_point(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - name: card
          path: "{id}.{format}"
          size: 200x200
          focus: [0.6, 0.5]
          format: png
        - name: middle
          path: "mid/{id}.{format}"
          size: 200x200
          format: png
        """)
    shop.put("a/1.png", marker_source((1000, 500), (600, 250)))
    shop.pick(a=("pick", None))
    assert shop.export(capsys)[0] == 0
    card = decode(shop.root / "a.png")
    assert card.size == (200, 200)
    cx, cy = red_centroid(card)
    assert abs(cx - 100) < 1.5 and abs(cy - 100) < 1.5  # the focus is the card's centre
    mx, _ = red_centroid(decode(shop.root / "mid" / "a.png"))
    assert abs(mx - 140) < 1.5  # without a focus the crop is centred: the marker is not


def test_contain_pads_with_the_background(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - path: "{id}.{format}"
          size: 300x300
          fit: contain
          background: "#00ff00"
          format: [png, jpeg]
        """)
    shop.put("a/1.png", Image.new("RGB", (1000, 500), BLUE))
    shop.pick(a=("pick", None))
    assert shop.export(capsys)[0] == 0
    for name, tol in (("a.png", 0), ("a.jpeg", 8)):
        img = decode(shop.root / name).convert("RGB")
        assert img.size == (300, 300)
        for y in (0, 40, 66, 234, 299):  # JPEG blurs a few pixels either side of an edge
            assert close(img.getpixel((150, y)), GREEN, tol), (name, y, img.getpixel((150, y)))
        for y in (84, 150, 216):
            assert close(img.getpixel((150, y)), BLUE, tol), (name, y, img.getpixel((150, y)))


def test_alpha_is_flattened_for_jpeg_and_kept_where_the_format_has_it(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - path: "{id}.{format}"
          width: 200
          background: "#ff0000"
          format: [jpeg, png, webp, avif]
        """)
    src = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    src.paste((0, 0, 255, 255), (200, 0, 400, 200))  # right half opaque blue
    shop.put("a/1.png", src)
    shop.pick(a=("pick", None))
    assert shop.export(capsys)[0] == 0
    jpeg = decode(shop.root / "a.jpeg")
    assert jpeg.mode == "RGB" and close(jpeg.getpixel((20, 50)), RED, 8)
    assert close(jpeg.getpixel((180, 50)), BLUE, 8)
    for name in ("a.png", "a.webp", "a.avif"):
        img = decode(shop.root / name).convert("RGBA")
        assert img.getpixel((20, 50))[3] == 0, name  # transparent stays transparent
        assert img.getpixel((180, 50))[3] == 255 and close(img.getpixel((180, 50))[:3], BLUE, 8)


def _icc(red: tuple[float, float, float], green: tuple[float, float, float],
         blue: tuple[float, float, float], gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile."""
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v: tuple[float, float, float]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    name = b"swapped RGB\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + b"\0" * 8 + b"\0" * 70
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)),
            (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    return header + table + data


def test_an_image_with_an_icc_profile_is_converted_to_srgb(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - path: "{id}.{format}"
          format: [png, jpeg, webp]
        """)
    swapped = _icc(SRGB_G, SRGB_R, SRGB_B)  # its "red" is sRGB's green
    shop.put("a/1.png", Image.new("RGB", (64, 64), (200, 30, 30)), icc_profile=swapped)
    shop.put("b/1.png", Image.new("RGB", (64, 64), (200, 30, 30)))  # untagged: sRGB
    shop.pick(a=("pick", None), b=("pick", None))
    assert shop.export(capsys)[0] == 0
    for fmt, tol in (("png", 3), ("jpeg", 10), ("webp", 10)):
        img = decode(shop.root / f"a.{fmt}")
        assert "icc_profile" not in img.info  # the pixels are sRGB, as untagged files are read
        assert close(img.convert("RGB").getpixel((32, 32)), (24, 201, 24), tol), fmt
        plain = decode(shop.root / f"b.{fmt}").convert("RGB").getpixel((32, 32))
        assert close(plain, (200, 30, 30), tol), fmt


# ---- provenance ------------------------------------------------------------------------------

def test_show_reads_the_request_from_every_format_unless_stripped(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - path: "{id}.{format}"
          width: 128
          format: [png, jpeg, webp, avif]
        - name: bare
          path: "bare/{id}.{format}"
          width: 128
          format: [png, jpeg, webp, avif]
          metadata: strip
        """)
    shop.put("a/1.png", scene((256, 256)))
    shop.pick(a=("pick", None))
    assert shop.export(capsys)[0] == 0
    body = shop.plan.jobs[0].body
    for fmt in ("png", "jpeg", "webp", "avif"):
        assert main(["show", str(shop.root / f"a.{fmt}")]) == 0
        assert capsys.readouterr().out.strip() == body, fmt
        assert main(["show", str(shop.root / "bare" / f"a.{fmt}")]) == 2
        assert "carries no imagebatch request" in capsys.readouterr().err
        assert shop.plan.jobs[0].request["prompt"].encode() not in \
            (shop.root / "bare" / f"a.{fmt}").read_bytes()


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF"])
def test_a_cut_or_forged_webp_or_avif_gives_a_clear_answer(tmp_path, fmt, capsys):
    from imagebatch.storage import metadata

    body = '{"prompt":"a \\"quoted\\" <fox> & \\u00e9\\n","seed":1}'
    buf = io.BytesIO()
    Image.new("RGBA", (32, 24), (1, 2, 3, 90)).save(buf, fmt, xmp=metadata.xmp_packet(body))
    data = buf.getvalue()
    assert metadata.extract(data) == body
    for cut in range(len(data)):  # every truncation: an answer or MetadataError, no crash
        with contextlib.suppress(metadata.MetadataError):
            metadata.extract(data[:cut])
    if fmt == "WEBP":  # an XMP chunk claiming 4 GB
        at = data.index(b"XMP ")
        forged = data[:at + 4] + struct.pack("<I", 0xFFFFFFF0) + data[at + 8:]
    else:  # a box claiming to run past the end of the file
        at = data.index(b"meta") - 4
        forged = data[:at] + struct.pack(">I", 0xFFFFFFF0) + data[at + 4:]
    with pytest.raises(metadata.MetadataError):
        metadata.extract(forged)
    path = tmp_path / "forged.img"
    path.write_bytes(forged)
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imagebatch: {path}: ") and "Traceback" not in err


# ---- same inputs, same bytes; only what changed is made --------------------------------------

FOUR = """\
- name: web
  path: "web/{id}-{width}.{format}"
  width: [300, 150]
  format: [webp, jpeg]
- name: card
  path: "card/{id}.{format}"
  size: 120x90
  format: [png, avif]
"""


def _three(tmp_path: Path) -> Shop:
    shop = Shop(tmp_path, FOUR)
    for i, name in enumerate("abc"):
        shop.put(f"{name}/1.png", scene((400, 300), seed=i))
    shop.pick(a=("pick", None), b=("pick", None), c=("pick", None))
    return shop


def test_the_same_inputs_give_the_same_bytes(tmp_path, capsys):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    first = shop.files()
    assert len(first) == 3 * 6 + 1  # three images, six files each, and assets.json
    other = shop.export(capsys, "--assets", str(tmp_path / "again"))
    assert other[0] == 0
    again = {str(p.relative_to(tmp_path / "again" / "shop")):
             hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((tmp_path / "again" / "shop").rglob("*"))
             if p.is_file() and not p.name.startswith(".imagebatch-export")}
    assert again == first


def test_only_what_changed_is_made_again(tmp_path, capsys):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    before, stamps = shop.files(), shop.stamps()

    code, out, _ = shop.export(capsys)  # nothing changed
    assert code == 0 and "0 files written, 18 up to date, 0 removed" in out
    assert shop.files() == before
    assert {k: v for k, v in shop.stamps().items() if k != "assets.json"} == \
        {k: v for k, v in stamps.items() if k != "assets.json"}

    later = time.time() + 10  # only the date of one source changes: its hash says "same"
    os.utime(shop.out / "shop" / "images" / "b" / "1.png", (later, later))
    assert "0 files written" in shop.export(capsys)[1]

    shop.put("b/1.png", scene((400, 300), seed=7))  # one source changes
    code, out, _ = shop.export(capsys)
    assert code == 0 and "6 files written, 12 up to date" in out
    after = shop.files()
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"assets.json", "web/b-300.webp", "web/b-300.jpeg", "web/b-150.webp",
                       "web/b-150.jpeg", "card/b.png", "card/b.avif"}

    shop.pick(c=("reject", None))  # un-picked: only its files go
    before, stamps = shop.files(), shop.stamps()
    code, out, _ = shop.export(capsys)
    assert code == 0 and "0 files written, 12 up to date, 6 removed" in out
    now = shop.files()
    assert set(before) - set(now) == {"web/c-300.webp", "web/c-300.jpeg", "web/c-150.webp",
                                      "web/c-150.jpeg", "card/c.png", "card/c.avif"}
    assert not (shop.root / "card" / "c.png").exists()
    assert all(shop.stamps()[k] == stamps[k] for k in now if k != "assets.json")
    assert all(f["source"]["path"] != "c/1.png" for f in shop.assets_json()["files"])

    shop.write(FOUR.replace("size: 120x90", "size: 120x90\n  quality: 50"))  # one export
    before = shop.files()
    code, out, _ = shop.export(capsys)
    assert code == 0 and "2 files written, 10 up to date" in out  # avif of a, b; png is lossless
    after = shop.files()
    assert {k for k in after if after[k] != before[k]} == \
        {"assets.json", "card/a.avif", "card/b.avif"}


def test_files_it_did_not_write_are_never_touched(tmp_path, capsys):
    shop = _three(tmp_path)
    shop.root.mkdir(parents=True)
    (shop.root / "README.txt").write_text("ours, not the export's")
    (shop.root / "web").mkdir()
    (shop.root / "web" / "a-300.webp").write_bytes(b"a file someone put here")
    code, _, err = shop.export(capsys)
    assert code == 1
    assert "NOT EXPORTED a/1.png (web, card): web/a-300.webp exists and was not written by " \
           "imagebatch export: left as it is" in err
    assert (shop.root / "web" / "a-300.webp").read_bytes() == b"a file someone put here"
    assert (shop.root / "README.txt").read_text() == "ours, not the export's"
    listed = {f["file"] for f in shop.assets_json()["files"]}
    assert "web/a-300.webp" not in listed and len(listed) == 17

    (shop.root / "web" / "a-300.webp").unlink()
    assert shop.export(capsys)[0] == 0
    shop.pick(a=("reject", None), b=("reject", None), c=("reject", None))
    code, out, _ = shop.export(capsys)
    assert code == 0 and "18 removed" in out
    assert (shop.root / "README.txt").read_text() == "ours, not the export's"
    assert shop.assets_json() == {"version": 1, "files": []}
    assert not (shop.root / "web").exists()  # its folders went with its files


def test_a_file_changed_on_disk_is_made_again_and_an_identical_one_is_adopted(tmp_path,
                                                                               capsys):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    good = (shop.root / "web" / "a-300.webp").read_bytes()
    (shop.root / "web" / "a-300.webp").write_bytes(b"spoiled")
    code, out, _ = shop.export(capsys)
    assert code == 0 and "1 file written" in out
    assert (shop.root / "web" / "a-300.webp").read_bytes() == good
    (shop.root / ".imagebatch-export.json").unlink()  # the export forgets what it wrote
    code, out, _ = shop.export(capsys)
    assert code == 0 and "0 files written" in out  # same bytes on disk: taken as its own
    assert len(shop.assets_json()["files"]) == 18


# ---- what cannot be exported -----------------------------------------------------------------

def test_missing_failed_and_stale_picks_are_listed_and_the_rest_is_written(tmp_path, capsys):
    jobs = JOBS.replace('"Boat"', '"Boat [[fail:400]]"') + \
        "  - id: d\n    prompt: \"Dune\"\n    seeds: [1]\n"
    shop = Shop(tmp_path, '- path: "{id}.{format}"\n  width: 64\n  format: png\n', jobs=jobs)
    assert main(["run", str(shop.manifest), "--out", str(shop.out)]) == 1  # b fails
    shop.pick(a=("pick", 5), b=("pick", None), c=("pick", None), d=(None, 2))
    # c is changed after it was picked (stale); e is added and never generated (pending)
    changed = jobs.replace('"Cloud"', '"Cloudy"') + "  - id: e\n    prompt: \"Elm\"\n" \
        "    seeds: [1]\n"
    shop.write('- path: "{id}.{format}"\n  width: 64\n  format: png\n', jobs=changed)
    shop.pick(e=("pick", None))
    code, out, err = shop.export(capsys)
    assert code == 1
    assert "1 file written" in out
    assert "NOT EXPORTED b/1.png (export-1): failed: " in err and "400" in err
    assert "NOT EXPORTED c/1.png (export-1): stale: decided on an earlier request" in err
    assert "NOT EXPORTED e/1.png (export-1): not generated yet" in err
    assert "d/1.png" not in err  # rated, not picked: not chosen
    assert "imagebatch: 3 chosen images not exported; the rest is written" in err
    assert [f["file"] for f in shop.assets_json()["files"]] == ["a.png"]
    assert Image.open(shop.root / "a.png").size == (64, 64)


def test_a_corrupt_source_and_a_decompression_bomb_fail_alone(tmp_path, capsys):
    shop = _three(tmp_path)
    images = shop.out / "shop" / "images"
    noise = Image.frombytes("RGB", (400, 300), os.urandom(400 * 300 * 3))
    shop.put("b/1.png", noise)
    data = bytearray((images / "b" / "1.png").read_bytes())
    data[len(data) // 4:] = bytes(len(data) - len(data) // 4)  # same size, other bytes
    (images / "b" / "1.png").write_bytes(bytes(data))
    bomb = io.BytesIO()
    Image.new("1", (12_000, 10_000)).save(bomb, "PNG")  # 120 Mpx, a few KB
    shop.put_bytes("c/1.png", bomb.getvalue())
    code, out, err = shop.export(capsys)
    assert code == 1 and "6 files written" in out
    # damaged in place: its hash is not the recorded image's, so it is not done
    assert "NOT EXPORTED b/1.png (web, card): the image on disk is not the one recorded" in err
    assert "NOT EXPORTED c/1.png (web, card): refused: Image size (120000000 pixels) " \
           "exceeds limit" in err
    assert {f["source"]["path"] for f in shop.assets_json()["files"]} == {"a/1.png"}
    assert not [p for p in shop.root.rglob("*") if p.name.startswith(".tmp-")]


def test_a_truncated_source_is_not_done_and_keeps_its_earlier_files(tmp_path, capsys):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    before = shop.files()
    img = shop.out / "shop" / "images" / "b" / "1.png"
    img.write_bytes(img.read_bytes()[:200])
    code, _, err = shop.export(capsys)
    assert code == 1
    assert "NOT EXPORTED b/1.png (web, card): the image on disk is not the one recorded " \
           "for this job" in err
    assert shop.files() == before  # b's files from before are still there, and listed


def test_the_export_root_being_a_file_is_refused(tmp_path, capsys):
    shop = _three(tmp_path)
    shop.assets.mkdir()
    shop.root.write_text("not a folder")
    code, _, err = shop.export(capsys)
    assert code == 2
    assert err.strip() == f"imagebatch: the export root {shop.root} is a file, not a folder"
    assert shop.root.read_text() == "not a folder"


@pytest.mark.parametrize(("errno_", "text"), [(28, "No space left on device"),
                                             (30, "Read-only file system")])
def test_a_full_or_read_only_disk_leaves_the_previous_files_and_assets_json(
        tmp_path, capsys, monkeypatch, errno_, text):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    before = shop.files()
    shop.put("a/1.png", scene((400, 300), seed=9))
    shop.put("b/1.png", scene((400, 300), seed=8))
    real = export_mod._write_tmp
    calls = []

    def full(path: str, data: bytes) -> None:
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno_, os.strerror(errno_), path)
        real(path, data)

    monkeypatch.setattr(export_mod, "_write_tmp", full)
    monkeypatch.setattr(export_mod, "PARALLEL_MIN", 10**6)  # in this process, so patched
    code, _, err = shop.export(capsys)
    assert code == 2
    assert err.startswith(f"imagebatch: cannot write in {shop.root}: ") and \
        text in err and err.count("\n") == 1
    assert shop.files() == before  # not one file replaced, assets.json as it was
    assert not [p for p in shop.root.rglob("*") if p.name.startswith(".tmp-")]


def test_a_picks_file_naming_images_outside_the_plan_is_refused(tmp_path, capsys):
    shop = _three(tmp_path)
    path = picks_path(shop.manifest)
    doc = json.loads(path.read_text())
    doc["picks"]["../../etc/passwd"] = {"key": "0" * 64, "rating": None, "status": "pick"}
    doc["picks"]["zz/1.png"] = {"key": "0" * 64, "rating": None, "status": "pick"}
    path.write_text(json.dumps(doc, indent=2))
    code, _, err = shop.export(capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{path}:20:5: ") and "the image path has an empty, " \
        "'.' or '..' part" in lines[0]
    assert any(f"{path}:" in line and "'zz/1.png' is not an image of the plan" in line
               for line in lines)
    assert not shop.root.exists()


def test_an_export_into_a_root_another_export_holds_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    shop = _three(tmp_path)
    shop.root.mkdir(parents=True)
    with open(shop.root / ".imagebatch-export.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, _, err = shop.export(capsys)
    assert code == 2 and f"another imagebatch export is writing to {shop.root}" in err
    assert not (shop.root / "assets.json").exists()


def test_no_picks_file_chooses_nothing_and_says_so(tmp_path, capsys):
    shop = Shop(tmp_path, FOUR)
    shop.put("a/1.png", scene((64, 64)))
    code, out, err = shop.export(capsys)
    assert code == 0 and "0 files written" in out
    assert f"note: no picks file {picks_path(shop.manifest)}: exports from picks choose " \
           "nothing yet" in err


def test_a_picks_file_given_that_does_not_exist_is_refused(tmp_path, capsys):
    shop = _three(tmp_path)
    code, _, err = shop.export(capsys, "--picks", str(tmp_path / "nope.json"))
    assert code == 2 and f"{tmp_path / 'nope.json'}: no such picks file" in err


def test_two_picked_images_writing_one_file_are_refused_before_writing(tmp_path, capsys):
    shop = Shop(tmp_path, '- path: "one.{format}"\n  format: png\n')
    for name in "ab":
        shop.put(f"{name}/1.png", scene((64, 64)))
    shop.pick(a=("pick", None), b=("pick", None))
    code, _, err = shop.export(capsys)
    assert code == 2
    assert f"{shop.manifest}:14:11: exports[0].path: 'one.png' would be written for both " \
           "a/1.png and b/1.png; both are picked: pick one, or add {id} to the " \
           "path" in err  # the one placeholder that tells them apart
    assert not (shop.root / "one.png").exists()


def test_a_state_file_cannot_make_the_export_remove_files_outside_its_root(tmp_path, capsys):
    shop = _three(tmp_path)
    assert shop.export(capsys)[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    state = json.loads((shop.root / ".imagebatch-export.json").read_text())
    rec = next(iter(state["files"].values()))
    st = victim.stat()
    state["files"]["../../victim.txt"] = {**rec, "bytes": st.st_size,
                                          "mtime_ns": st.st_mtime_ns}
    (shop.root / ".imagebatch-export.json").write_text(json.dumps(state))
    assert shop.export(capsys)[0] == 0
    assert victim.read_text() == "keep me"


def test_a_source_that_links_out_of_the_images_folder_is_refused(tmp_path, capsys):
    shop = _three(tmp_path)
    outside = tmp_path / "secret.png"
    scene((64, 64)).save(outside)
    link = shop.out / "shop" / "images" / "c" / "1.png"
    link.unlink()
    link.symlink_to(outside)
    code, _, err = shop.export(capsys)
    assert code == 1
    assert "NOT EXPORTED c/1.png (web, card): " in err


def test_a_format_this_pillow_cannot_write_is_named_with_the_fix(tmp_path, capsys,
                                                                monkeypatch):
    shop = _three(tmp_path)
    real = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "avif" else
                        real(name))
    code, _, err = shop.export(capsys)
    assert code == 2
    assert "cannot write AVIF: it was built without libavif" in err
    assert "pip install --upgrade 'pillow>=11.3'" in err
    assert not [p for p in shop.root.rglob("*") if p.suffix in (".webp", ".avif", ".png")]
    assert not (shop.root / "assets.json").exists()


# ---- the whole path --------------------------------------------------------------------------

def test_run_pick_export_show_against_the_embedded_server(tmp_path, capsys):
    shop = Shop(tmp_path, """\
        - name: web
          path: "{id}/{vars}-{width}w.{format}"
          width: [512, 256]
          format: [webp, jpeg]
        - name: og
          path: "og/{id}-{seed}.{format}"
          size: 600x315
          format: png
        """, jobs="""\
version: 1
name: shop
seeds: [1, 2]
jobs:
  - id: fox
    prompt: "A fox, {medium}"
    matrix:
      medium: [ink, clay]
""")
    assert main(["run", str(shop.manifest), "--out", str(shop.out)]) == 0
    update_picks(picks_path(shop.manifest), shop.plan,
                 {"fox/ink/2.png": ("pick", 5), "fox/clay/1.png": ("pick", None),
                  "fox/clay/2.png": ("reject", None)})
    code, out, _ = shop.export(capsys)
    assert code == 0, out
    files = {f["file"]: f for f in shop.assets_json()["files"]}
    assert set(files) == {"fox/ink-512w.webp", "fox/ink-512w.jpeg", "fox/ink-256w.webp",
                          "fox/ink-256w.jpeg", "fox/clay-512w.webp", "fox/clay-512w.jpeg",
                          "fox/clay-256w.webp", "fox/clay-256w.jpeg", "og/fox-2.png",
                          "og/fox-1.png"}
    assert files["og/fox-2.png"]["source"]["path"] == "fox/ink/2.png"
    assert (files["og/fox-2.png"]["width"], files["og/fox-2.png"]["height"]) == (600, 315)
    capsys.readouterr()
    assert main(["show", str(shop.root / "fox" / "ink-256w.webp")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompt"] == "A fox, ink" and shown["seed"] == 2
    assert main(["status", str(shop.manifest), "--out", str(shop.out)]) == 0


def test_a_manifest_without_exports_writes_an_empty_assets_json(tmp_path, capsys):
    manifest = tmp_path / "plain.yaml"
    manifest.write_text(JOBS.replace("name: shop", "name: plain"))
    code = main(["export", str(manifest), "--out", str(tmp_path / "out"),
                 "--assets", str(tmp_path / "assets")])
    assert code == 0
    assert json.loads((tmp_path / "assets" / "plain" / "assets.json").read_text()) == \
        {"version": 1, "files": []}
