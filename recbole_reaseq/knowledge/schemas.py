"""JSON schemas of the three agent layers of multi-agent knowledge reasoning (MAKR).

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.1 "multi-agent knowledge
reasoning" and the Appendix prompts. Layer 1 agents build, per primary category, a demand-oriented
and an attribute-oriented taxonomy of dimensions; the Layer 2 agent refines them per subcategory;
the Layer 3 agent writes item-level knowledge for every dimension. Every answer of every agent is
checked against the schema of its layer before it is accepted (and re-asked when it fails).

* ``L1``: ``{"category", "stream": "demand"|"attribute", "dimensions": [{"name", "description",
  "expressions": [str, ...]}]}``
* ``L2``: ``{"subcategory", "reasoning", "dimensions": [{"name", "origin": "inherited"|"new",
  "justification", "attributes": [str, ...], "expressions": [str, ...]}]}``
* ``L3``: ``{"item_id", "knowledge": [{"perspective": "demand"|"attribute", "dimension",
  "evidence": [str, ...], "analysis", "keywords": [str, ...]}]}``

NOTE: the paper publishes no machine-readable output format; these schemas are ours. They are
strict (``additionalProperties: false``, non-empty strings) so that a malformed answer is re-asked
instead of silently accepted.
NOTE: the paper's L2 output is per subcategory; ours carries no ``stream`` field, so the L2 agent is
asked once per (subcategory, stream) and the caller keeps the stream (see ``agents.py``).
NOTE: ``knowledge`` may be empty (an item whose metadata supports no dimension); ``evidence`` and
``keywords`` may not, since every knowledge entry must be grounded and encodable.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

from jsonschema import Draft202012Validator

__all__ = ["LAYERS", "SCHEMAS", "SchemaError", "validate", "schema_json", "format_path"]

LAYERS = ("L1", "L2", "L3")

_STR = {"type": "string", "minLength": 1}
_STR_LIST = {"type": "array", "items": _STR}
_STR_LIST_NONEMPTY = {"type": "array", "items": _STR, "minItems": 1}

SCHEMAS: Dict[str, Dict[str, Any]] = {
    "L1": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ReaSeq MAKR layer 1: category taxonomy of one stream",
        "type": "object",
        "required": ["category", "stream", "dimensions"],
        "additionalProperties": False,
        "properties": {
            "category": _STR,
            "stream": {"enum": ["demand", "attribute"]},
            "dimensions": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "description", "expressions"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _STR,
                        "description": _STR,
                        "expressions": _STR_LIST_NONEMPTY,
                    },
                },
            },
        },
    },
    "L2": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ReaSeq MAKR layer 2: refined dimensions of one subcategory",
        "type": "object",
        "required": ["subcategory", "reasoning", "dimensions"],
        "additionalProperties": False,
        "properties": {
            "subcategory": _STR,
            "reasoning": _STR,
            "dimensions": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "origin", "justification", "attributes", "expressions"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _STR,
                        "origin": {"enum": ["inherited", "new"]},
                        "justification": _STR,
                        "attributes": _STR_LIST,
                        "expressions": _STR_LIST_NONEMPTY,
                    },
                },
            },
        },
    },
    "L3": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ReaSeq MAKR layer 3: item-level knowledge",
        "type": "object",
        "required": ["item_id", "knowledge"],
        "additionalProperties": False,
        "properties": {
            "item_id": _STR,
            "knowledge": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["perspective", "dimension", "evidence", "analysis", "keywords"],
                    "additionalProperties": False,
                    "properties": {
                        "perspective": {"enum": ["demand", "attribute"]},
                        "dimension": _STR,
                        "evidence": _STR_LIST_NONEMPTY,
                        "analysis": _STR,
                        "keywords": _STR_LIST_NONEMPTY,
                    },
                },
            },
        },
    },
}

for _schema in SCHEMAS.values():
    Draft202012Validator.check_schema(_schema)
_VALIDATORS = {layer: Draft202012Validator(schema) for layer, schema in SCHEMAS.items()}


class SchemaError(ValueError):
    """An agent answer does not match its layer's schema.

    Attributes:
        layer: ``"L1"``, ``"L2"`` or ``"L3"``.
        path: JSON path of the first failing field, e.g. ``"$.dimensions[0].name"``.
        problems: every ``"path: message"`` found, sorted by path.
    """

    def __init__(self, message: str, layer: str, path: str, problems: List[str]):
        super().__init__(message)
        self.layer = layer
        self.path = path
        self.problems = problems


def format_path(parts: Any) -> str:
    """``["dimensions", 0, "name"]`` -> ``"$.dimensions[0].name"``."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _expected(error: Any) -> str:
    """Human-readable statement of what the failing keyword expected."""
    kw, val = error.validator, error.validator_value
    if kw == "type":
        return f"a value of JSON type {val!r}"
    if kw == "enum":
        return "one of " + ", ".join(json.dumps(v) for v in val)
    if kw == "required":
        return "an object with the fields " + ", ".join(json.dumps(v) for v in val)
    if kw == "additionalProperties":
        return "no fields besides " + ", ".join(json.dumps(v) for v in sorted(error.schema["properties"]))
    if kw == "minLength":
        return f"a string of at least {val} character(s)"
    if kw == "minItems":
        return f"a list of at least {val} element(s)"
    return f"{kw} = {json.dumps(val)}"


def validate(layer: str, obj: Any) -> Dict[str, Any]:
    """Check ``obj`` against the schema of ``layer`` and return it unchanged.

    Raises:
        KeyError: unknown layer.
        SchemaError: the message names the failing field path, what was found and what was
            expected, e.g. ``L1 answer does not match the schema at $.stream: 'price' is not one of
            ['demand', 'attribute'] (expected one of "demand", "attribute")``.
    """
    if layer not in _VALIDATORS:
        raise KeyError(f"unknown layer {layer!r}; expected one of {', '.join(LAYERS)}")
    errors = sorted(_VALIDATORS[layer].iter_errors(obj),
                    key=lambda e: (format_path(e.absolute_path), e.validator, e.message))
    if not errors:
        return obj
    problems = [f"{format_path(e.absolute_path)}: {e.message} (expected {_expected(e)})"
                for e in errors]
    first = errors[0]
    path = format_path(first.absolute_path)
    more = f" [+{len(errors) - 1} more: {'; '.join(problems[1:4])}]" if len(errors) > 1 else ""
    message = (f"{layer} answer does not match the schema at {path}: {first.message} "
               f"(expected {_expected(first)}){more}. Fix: return a JSON object with exactly the "
               f"fields of the {layer} schema.")
    raise SchemaError(message, layer, path, problems)


def schema_json(layer: str) -> str:
    """The schema of ``layer`` as indented JSON, for prompts."""
    return json.dumps(SCHEMAS[layer], indent=2, sort_keys=False)
