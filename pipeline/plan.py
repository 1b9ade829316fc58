"""PURE: Manifest -> Plan (tuple of Job); keys, seeds, paths, shards.

Nothing here touches the disk, the network, the clock or the environment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


def canonical_json(body: dict[str, Any]) -> str:
    """The canonical JSON text of a request body: sorted keys, no spaces, UTF-8 as itself."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_key(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a request body."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The manifest's `output:` block."""

    path: str = "{id}/{vars}/{seed}.{ext}"
    thumbnail: int = 256
    label: str = "{id} {vars} #{seed}"
    per_page: int = 100


@dataclass(frozen=True, slots=True)
class Job:
    """One request body plus where its image goes."""

    index: int  # position in the whole plan (before sharding)
    id: str  # the manifest job's id
    key: str  # job_key(request)
    path: str  # POSIX path relative to outputs/<name>/images/
    body: str  # canonical_json(request): exactly what is sent
    seed: int
    vars: tuple[tuple[str, str], ...]  # matrix and zip values, manifest order
    label: str  # caption for contact sheets

    @property
    def request(self) -> dict[str, Any]:
        """The request body as a dict (a fresh copy each call)."""
        return json.loads(self.body)

    @property
    def ext(self) -> str:
        """File extension of the image: png or jpg."""
        return "jpg" if self.request.get("output_format") == "jpeg" else "png"

    @property
    def variant(self) -> str:
        """The job id and its variable values: a row of a seed-sweep grid."""
        return " ".join([self.id, *(v for _, v in self.vars)]).strip()


@dataclass(frozen=True, slots=True)
class Plan:
    """The expanded, ordered job list of one manifest (possibly one shard of it)."""

    name: str
    model: str
    source: str  # manifest file as given
    output: OutputSettings
    jobs: tuple[Job, ...]
    total: int  # jobs in the whole plan, before sharding
    shard: tuple[int, int] | None = None  # (K, N), 1-based K
