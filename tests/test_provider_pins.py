# ruff: noqa: E501 - the pinned bodies are literals, one a line
"""Keys, bodies and `plan --json` of Heroku and Stability manifests, pinned as they were
before providers became modules (computed on the commit before it): what is done stays done.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

from imagebatch.commands.preview import plan_command
from imagebatch.planning.manifest import load_plans

M_HEROKU = """version: 1
name: pin-heroku
model: stable-image-ultra
defaults:
  negative_prompt: "blurry, text"
  output_format: jpeg
jobs:
  - id: fox
    prompt: "a {animal} in the snow, café light"
    matrix:
      animal: [fox, "owl ✨"]
      size: [1024x1024, 1344x768]
    seeds: [1, 42, 4294967295]
  - id: plain
    prompt: plain prompt
    aspect_ratio: "9:16"
    seeds: {start: 7, count: 2}
"""
M_BOTH = """version: 1
name: pin-both
jobs:
  - id: city
    prompt: "a city at {time}"
    negative_prompt: fog
    aspect_ratio: "21:9"
    matrix:
      time: [dawn, dusk]
    output_format: png
    seeds: [3, 4294967294]
"""
M_STAB = """version: 1
name: pin-stability
defaults:
  output_format: webp
jobs:
  - id: more
    prompt: "the same, but blue"
    image: in.png
    strength: 0.35
    aspect_ratio: "3:2"
    seeds: [11, 12]
  - id: wide
    prompt: "a wide field"
    aspect_ratio: "16:9"
    seeds: [5]
"""


def png(w: int = 64, h: int = 64) -> bytes:
    raw = b"".join(b"\x00" + bytes([(x * 3 + y) % 256 for x in range(w * 3)]) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))



POOL = {"A_URL": "https://us.inference.heroku.com", "A_KEY": "hk-123456",
        "B_PROVIDER": "stability", "B_KEY": "sk-123456"}
CASES = {
    "heroku": ("h.yaml", {}, ["DIFFUSION"]),
    "heroku-both": ("b.yaml", {}, ["DIFFUSION"]),
    "stability-both": ("b.yaml", {"DIFFUSION_PROVIDER": "stability"}, ["DIFFUSION"]),
    "stability": ("s.yaml", {"DIFFUSION_PROVIDER": "stability"}, ["DIFFUSION"]),
    "pool": ("b.yaml", POOL, ["A,B"]),
}
#: SHA-256 of each case's `plan --json` (sorted keys, the folder written as TMP).
PLAN_JSON = {
    "heroku": "91763504b95bd080d195724495fa29dfd30fb28049274d64f53df8116be1fcee",
    "heroku-both": "ab0ae8943c318dfa7b2a7771fbe9e1f7b333ec942303e6271610e128141f4a43",
    "stability-both": "1b3a76d7152f767eb475611bd24479541d83a35ed89365c610143b240bfb09f6",
    "stability": "b317d82ada4db7079c8a5f7a5acdf140ae2db26d83ac3673b3d0648357aae9f6",
    "pool": "ab0ae8943c318dfa7b2a7771fbe9e1f7b333ec942303e6271610e128141f4a43",
}
#: Each case's first job: its key and body.
FIRST = {
    "heroku": [
        "f388708a6b78b5d709b43f601206b8fd4bb89a1c2075016df4fcf7f96ce1cb7e",
        "{\"model\":\"stable-image-ultra\",\"negative_prompt\":\"blurry, text\",\"output_format\":\"jpeg\",\"prompt\":\"a fox in the snow, café light\",\"seed\":1,\"size\":\"1024x1024\"}"
    ],
    "heroku-both": [
        "ec5eb4d0d38b1b100704cca93b6558c03d4da145926b25c11ec9ae762e784ba0",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"seed\":3}"
    ],
    "stability-both": [
        "fe1169eab3ca5308e2cd9f2f15bb4d24ec4380270773152d9d067045b65970ce",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"provider\":\"stability\",\"seed\":3}"
    ],
    "stability": [
        "ffaec22155679e19c4330700a60a0b46bc56ebc147e4e6cbe679ac24a09155f0",
        "{\"aspect_ratio\":\"3:2\",\"image\":\"sha256:48ce06ff109e42e18aae6d626b0b03c2ff48e7cba0fe5ff9192802ce0aeb11a1\",\"model\":\"stable-image-ultra\",\"output_format\":\"webp\",\"prompt\":\"the same, but blue\",\"provider\":\"stability\",\"seed\":11,\"strength\":0.35}"
    ],
    "pool": [
        "ec5eb4d0d38b1b100704cca93b6558c03d4da145926b25c11ec9ae762e784ba0",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"seed\":3}"
    ],
}
#: The mixed pool's jobs: key and body, and its Stability variant's.
POOL_JOBS = [
    [
        "ec5eb4d0d38b1b100704cca93b6558c03d4da145926b25c11ec9ae762e784ba0",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"seed\":3}",
        [
            [
                "fe1169eab3ca5308e2cd9f2f15bb4d24ec4380270773152d9d067045b65970ce",
                "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"provider\":\"stability\",\"seed\":3}"
            ]
        ]
    ],
    [
        "99307b50b37e8915e68c3599235c0da51c9385ce231342ec7c82ccad6f34c3f2",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"seed\":4294967294}",
        [
            [
                "7c155764894ba238d7354d4cfe165183d7de62682ff832ab18ddf7ed187ef6b0",
                "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dawn\",\"provider\":\"stability\",\"seed\":4294967294}"
            ]
        ]
    ],
    [
        "b49c3e8eefc8b8f67264e9883268ed477f699555eda8a4da496d2a0488b82303",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dusk\",\"seed\":3}",
        [
            [
                "f35a0ba0f9b62b0dc5c3407c42f6102ca9f8706cbca9e2b63c48fcb075d1f3b7",
                "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dusk\",\"provider\":\"stability\",\"seed\":3}"
            ]
        ]
    ],
    [
        "3e1bbfc1e164ca7742478546c781721d843cfe333aba14a78e011e91d5512324",
        "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dusk\",\"seed\":4294967294}",
        [
            [
                "9d9c25930c094c274020f3a4ced7658e4d7b8e51f19591fc933e93207af878ac",
                "{\"aspect_ratio\":\"21:9\",\"model\":\"stable-image-ultra\",\"negative_prompt\":\"fog\",\"output_format\":\"png\",\"prompt\":\"a city at dusk\",\"provider\":\"stability\",\"seed\":4294967294}"
            ]
        ]
    ]
]


def write(tmp: Path) -> None:
    (tmp / "h.yaml").write_text(M_HEROKU, encoding="utf-8")
    (tmp / "b.yaml").write_text(M_BOTH, encoding="utf-8")
    (tmp / "s.yaml").write_text(M_STAB, encoding="utf-8")
    (tmp / "in.png").write_bytes(png())


def test_plan_json_keys_and_bodies_are_what_they_were(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    for case, (manifest, env, prefixes) in CASES.items():
        buf = io.StringIO()
        assert plan_command(str(tmp_path / manifest), as_json=True, env=env,
                            env_prefixes=prefixes, out=buf) == 0
        doc = json.loads(buf.getvalue())
        first = [doc[0]["key"], json.dumps(doc[0]["request"], sort_keys=True,
                                           separators=(",", ":"), ensure_ascii=False)]
        assert first == FIRST[case], case
        text = json.dumps(doc, sort_keys=True, ensure_ascii=False).replace(str(tmp_path), "TMP")
        assert hashlib.sha256(text.encode()).hexdigest() == PLAN_JSON[case], case


def test_a_mixed_pools_keys_and_bodies_are_what_they_were(tmp_path):
    write(tmp_path)
    (plan,) = load_plans([str(tmp_path / "b.yaml")], POOL, ["A", "B"])
    got = [[j.key, j.body, [[v.key, v.body] for v in j.variants]] for j in plan.jobs]
    assert got == POOL_JOBS
    for job in plan.jobs:  # a key is the SHA-256 of its body, as before
        assert job.key == hashlib.sha256(job.body.encode()).hexdigest()
