"""The manifest's JSON Schema (draft 2020-12), for editors; the loader stays the authority."""

from __future__ import annotations

import json
from typing import Any

from . import apispec
from .promptlock import MAX_COUNT

_TEXT = {"type": "string", "minLength": 1, "maxLength": apispec.MAX_PROMPT_CHARS}
_SEED = {"type": "integer", "minimum": 1, "maximum": apispec.MAX_SEED,
         "description": "1..4294967295; 0 (server-random) is refused: use {random: N}"}


def _fields() -> dict[str, Any]:
    return {
        "prompt": {**_TEXT, "description": "what to draw; {variables} are filled in"},
        "negative_prompt": {"type": "string", "maxLength": apispec.MAX_PROMPT_CHARS,
                            "description": "what to keep out of the image"},
        "aspect_ratio": {"enum": list(apispec.ASPECT_RATIOS),
                         "description": "quote it: unquoted 16:9 is a number in YAML 1.1"},
        "size": {"enum": list(apispec.SIZES)},
        "output_format": {"enum": list(apispec.ALL_OUTPUT_FORMATS),
                          "description": "webp: the stability provider only"},
        "seed": _SEED,
        "image": {"type": "string", "minLength": 1,
                  "description": "input image for image-to-image (stability provider), a file "
                                 "relative to the manifest; its SHA-256 is part of the key"},
        "strength": {"type": "number", "minimum": 0, "maximum": 1,
                     "description": "with image: 0 keeps the image, 1 ignores it"},
    }


def _export() -> dict[str, Any]:
    from .manifest import MAX_EXPORT_SIDE, MAX_WIDTHS
    from .plan import DEFAULT_EXPORT_PATH, EXPORT_FORMATS

    side = {"type": "integer", "minimum": 1, "maximum": MAX_EXPORT_SIDE}
    fmt = {"enum": list(EXPORT_FORMATS)}
    return {
        "type": "object", "additionalProperties": False,
        "description": "files made of the picked (or all) images: sizes, crops, formats",
        "not": {"required": ["width", "size"]},
        "dependentRequired": {"fit": ["size"], "focus": ["size"]},
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$", "maxLength": 100,
                     "description": "default export-1, export-2, ...; unique"},
            "from": {"description": "picks (default), all, or {rating: N}: rated N or more",
                     "oneOf": [{"enum": ["picks", "all"]},
                               {"type": "object", "additionalProperties": False,
                                "required": ["rating"],
                                "properties": {"rating": {"type": "integer", "minimum": 1,
                                                          "maximum": 5}}}]},
            "path": {"type": "string", "minLength": 1, "default": DEFAULT_EXPORT_PATH,
                     "description": "under the export root; job placeholders and {width}, "
                                    "{height}, {format}, {export}"},
            "width": {"description": "resize to each width; the height follows",
                      "oneOf": [side, {"type": "array", "items": side, "minItems": 1,
                                       "maxItems": MAX_WIDTHS, "uniqueItems": True}]},
            "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$",
                     "description": "an exact box WIDTHxHEIGHT, filled as `fit` says"},
            "fit": {"enum": ["cover", "contain"], "default": "cover"},
            "focus": {"type": "array", "minItems": 2, "maxItems": 2,
                      "items": {"type": "number", "minimum": 0, "maximum": 1},
                      "description": "[x, y]: the point a cover crop keeps (0.5 is the middle)"},
            "format": {"description": "one format or a list (default webp)",
                       "oneOf": [fmt, {"type": "array", "items": fmt, "minItems": 1,
                                       "uniqueItems": True}]},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100},
            "background": {"type": "string", "minLength": 1, "default": "white",
                           "description": "#rrggbb, #rgb or a colour name: behind "
                                          "transparency in JPEG, and contain's padding"},
            "upscale": {"type": "boolean", "default": False},
            "metadata": {"enum": ["keep", "strip"], "default": "keep"},
        },
    }


def manifest_schema() -> dict[str, Any]:
    """A JSON Schema of manifest version 1, as `imagebatch schema` prints it."""
    from .manifest import MAX_EXPORTS

    seeds = {
        "description": "a seed, a list, {start, count} or {random: N}",
        "oneOf": [
            _SEED,
            {"type": "array", "items": _SEED, "minItems": 1, "uniqueItems": True},
            {"type": "object", "additionalProperties": False, "required": ["start", "count"],
             "properties": {"start": _SEED, "count": {"type": "integer", "minimum": 1}}},
            {"type": "object", "additionalProperties": False, "required": ["random"],
             "properties": {"random": {"type": "integer", "minimum": 1}}},
        ],
    }
    fields = _fields()
    def listed_or_drawn(items: dict[str, Any]) -> dict[str, Any]:
        # a list, or {values: [...]} / {from: FILE} with an optional draw: N and seed: S
        listed = {"type": "array", "minItems": 1, "uniqueItems": True, "items": items}
        return {"oneOf": [listed, {
            "type": "object", "additionalProperties": False,
            "description": "values from a list or a file (one a line, relative to the "
                           "manifest), all of them or `draw` of them",
            "properties": {
                "values": listed,
                "from": {"type": "string", "minLength": 1},
                "draw": {"type": "integer", "minimum": 1},
                "seed": _SEED,
            },
            "oneOf": [{"required": ["values"]}, {"required": ["from"]}],
        }]}

    axis_values = listed_or_drawn({"type": ["string", "number", "boolean"]})
    axes = {
        "type": "object", "minProperties": 1,
        "description": "request fields or {variables}, each a list of values",
        "properties": {k: listed_or_drawn(v) for k, v in fields.items() if k != "seed"},
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                          "not": {"enum": ["seed", "seeds", "model", "id", "index", "ext",
                                           "key", "aspect", "vars"]}},
        "additionalProperties": axis_values,
    }
    job = {
        "type": "object", "additionalProperties": False, "required": ["id"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$", "maxLength": 100},
            **fields,
            "seeds": seeds,
            "matrix": {**axes, "description": "cartesian product of every axis"},
            "zip": {**axes, "description": "axes that vary together, element by element"},
            "prompts": {
                "type": "object", "additionalProperties": False,
                "required": ["brief", "count"],
                "description": "prompts a chat model writes from a brief (`imagebatch "
                               "expand`), read from the manifest's prompts lock; instead "
                               "of `prompt`",
                "properties": {
                    "brief": {**_TEXT, "description": "what the prompts are about"},
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
                    "vary": {**_TEXT, "description": "what to vary between prompts"},
                    "keep": {**_TEXT, "description": "what every prompt keeps"},
                },
            },
        },
        "not": {"required": ["prompt", "prompts"]},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://imagebatch.invalid/manifest-v1.schema.json",
        "title": "imagebatch manifest (version 1)",
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "jobs"],
        "properties": {
            "version": {"const": 1},
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$", "maxLength": 100},
            "model": {"type": "string", "minLength": 1},
            "defaults": {"type": "object", "additionalProperties": False, "properties": fields},
            "seeds": seeds,
            "output": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "path": {"type": "string", "default": "{id}/{vars}/{seed}.{ext}"},
                    "thumbnail": {"type": "integer", "minimum": 0, "maximum": 2048,
                                  "default": 256},
                    "sheet": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "label": {"type": "string", "default": "{id} {vars} #{seed}"},
                            "per_page": {"type": "integer", "minimum": 1, "maximum": 10000,
                                         "default": 100},
                        },
                    },
                },
            },
            "jobs": {"type": "array", "minItems": 1, "items": job},
            "exports": {"type": "array", "maxItems": MAX_EXPORTS, "items": _export()},
        },
    }


def schema_text() -> str:
    """The schema as `imagebatch schema` prints it and `imagebatch init` writes it."""
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"
