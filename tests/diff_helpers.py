"""The manifest the plan-diff tests start from."""

from __future__ import annotations

#: 2 fox variants x 3 seeds + 1 boat: 7 jobs.
LAUNCH = """\
version: 1
name: launch
seeds: [1, 2, 3]
jobs:
  - id: fox
    prompt: "A fox in the snow, {style}"
    matrix:
      style: [ink, clay]
  - id: boat
    prompt: "A paper boat"
    seeds: [5]
"""
