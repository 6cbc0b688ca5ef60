"""Reading the contract files in ``schemas/`` and validating against them.

The schema files live at the top of the repository (they are the analytics teams'
contract, not code); ``SCHEMA_DIR`` points there from a source checkout.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
BASELINE_DIR = SCHEMA_DIR / "baseline"
TRACE_SCHEMA = "trace.v1"

Schema = dict[str, Any]


def load_schema(name: str, directory: Path = SCHEMA_DIR) -> Schema:
    """The schema ``<directory>/<name>.json`` (``name`` is a topic or ``trace.v1``)."""
    data = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{name}: a schema must be a JSON object")
    return data


def schema_names(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files in ``directory``, sorted."""
    return sorted(p.name.removesuffix(".json") for p in directory.glob("*.json"))


def closed(schema: Schema) -> Schema:
    """``schema`` with ``additionalProperties: false`` on its top-level object.

    The files are open for readers; our producers are held to this closed form, so
    a field written but not declared (a typo, a leak of prompt text) fails the tests.
    """
    strict = copy.deepcopy(schema)
    strict["additionalProperties"] = False
    return strict


@cache
def _validator(name: str, strict: bool) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(
        closed(schema) if strict else schema, format_checker=FormatChecker()
    )


def validation_errors(name: str, instance: object, *, strict: bool = True) -> list[str]:
    """Every violation of schema ``name`` by ``instance``, as readable lines (empty: valid)."""
    errors = _validator(name, strict).iter_errors(instance)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
