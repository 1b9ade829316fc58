"""The small sweep manifest the budget, selection and plan-count tests share."""

from __future__ import annotations

#: 2 fox variants x 3 seeds + 1 boat variant x 2 seeds: 8 jobs, 3 variants.
MANIFEST = """\
version: 1
name: sweep
defaults:
  output_format: png
jobs:
  - id: fox
    prompt: "A fox, {style}"
    matrix:
      style: [ink, clay]
    seeds: [1, 2, 3]
  - id: boat
    prompt: "A paper boat"
    seeds: [5, 6]
"""
