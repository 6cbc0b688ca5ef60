"""Refuse schema changes that are not backward compatible with the committed baseline.

Theory of operation: ``schemas/baseline/`` holds the schemas as last released.
``compare(old, new)`` walks both side by side and lists every change that could
break someone, so an empty list means the change is safe. "Safe" means both:

- every event valid under the baseline stays valid under the new schema (nothing
  narrowed: types, enums, bounds, patterns, closed objects), and
- every field the baseline promised is still there and still required (readers
  rely on it): no removed or renamed field, no required field made optional, and
  no new required field (old producers do not write it).

What it cannot prove safe it refuses (an unknown keyword that changed, a new
pattern or format). Annotations (``description``, ``examples``...) are free. A
breaking change needs a new topic (``.v2``), not an edit.

``python -m ingest.schema_compat`` checks ``schemas/*.json`` against the baseline
(exit status 1 on a breaking change); ``--update-baseline`` copies the current
files over the baseline after the same check passes (do that when releasing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ingest.contracts import BASELINE_DIR, SCHEMA_DIR, Schema, load_schema, schema_names

_ANNOTATIONS = frozenset(
    {"title", "description", "$comment", "examples", "default", "deprecated", "$schema"}
)
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_MUST_NOT_APPEAR = ("pattern", "format", "multipleOf", "const")
_SUBSCHEMAS = ("items", "propertyNames", "contains")
_HANDLED = frozenset(
    {
        "type", "enum", "properties", "required", "additionalProperties",
        *_LOWER_BOUNDS, *_UPPER_BOUNDS, *_MUST_NOT_APPEAR, *_SUBSCHEMAS,
    }
)  # fmt: skip


def compare(old: Any, new: Any, path: str = "") -> list[str]:
    """Every backward-incompatible difference from ``old`` to ``new`` (empty: compatible)."""
    where = path or "<root>"
    if old is True or old == {}:
        return [] if new is True or new == {} else [f"{where}: was unconstrained, now constrained"]
    if old is False:
        return []
    if new is False:
        return [f"{where}: now rejects everything"]
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [f"{where}: not a schema object"]
    problems: list[str] = []
    problems += _types(old, new, where)
    problems += _enum(old, new, where)
    problems += _objects(old, new, path)
    problems += _bounds(old, new, where)
    for key in _MUST_NOT_APPEAR:
        if key in new and new.get(key) != old.get(key):
            problems.append(f"{where}: {key} added or changed ({old.get(key)!r} -> {new[key]!r})")
    for key in _SUBSCHEMAS:
        if key in old or key in new:
            problems += compare(old.get(key, True), new.get(key, True), f"{path}/{key}")
    for key in sorted((set(old) | set(new)) - _ANNOTATIONS - _HANDLED):
        if old.get(key) != new.get(key):
            problems.append(f"{where}: change to '{key}' cannot be checked; make a new topic")
    return problems


def _type_set(schema: Schema) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _types(old: Schema, new: Schema, where: str) -> list[str]:
    before, after = _type_set(old), _type_set(new)
    if after is None:
        return []
    if before is None:
        return [f"{where}: type narrowed (any -> {sorted(after)})"]
    lost = {t for t in before if t not in after and not (t == "integer" and "number" in after)}
    return [f"{where}: type narrowed ({sorted(lost)} no longer allowed)"] if lost else []


def _enum(old: Schema, new: Schema, where: str) -> list[str]:
    if "enum" not in new:
        return []
    if "enum" not in old:
        return [f"{where}: enum added (narrows the values allowed)"]
    removed = [v for v in old["enum"] if v not in new["enum"]]
    return [f"{where}: enum value(s) removed: {removed!r}"] if removed else []


def _objects(old: Schema, new: Schema, path: str) -> list[str]:
    where = path or "<root>"
    problems: list[str] = []
    old_props: Schema = old.get("properties", {})
    new_props: Schema = new.get("properties", {})
    for name, sub in old_props.items():
        if name not in new_props:
            problems.append(f"{where}: field '{name}' removed (or renamed)")
        else:
            problems += compare(sub, new_props[name], f"{path}/properties/{name}")
    old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(new_req - old_req):
        problems.append(f"{where}: new required field '{name}'")
    for name in sorted(old_req - new_req):
        problems.append(f"{where}: field '{name}' no longer required")
    old_extra, new_extra = (
        old.get("additionalProperties", True),
        new.get("additionalProperties", True),
    )
    if old_extra is not False:
        problems += compare(old_extra, new_extra, f"{path}/additionalProperties")
    return problems


def _bounds(old: Schema, new: Schema, where: str) -> list[str]:
    problems: list[str] = []
    checks: list[tuple[tuple[str, ...], Callable[[float, float], bool]]] = [
        (_LOWER_BOUNDS, lambda was, now: now > was),
        (_UPPER_BOUNDS, lambda was, now: now < was),
    ]
    for keys, narrower in checks:
        for key in keys:
            if key not in new:
                continue
            if key not in old or narrower(old[key], new[key]):
                problems.append(f"{where}: {key} narrowed ({old.get(key)!r} -> {new[key]!r})")
    return problems


def check_dirs(current: Path = SCHEMA_DIR, baseline: Path = BASELINE_DIR) -> list[str]:
    """Problems of ``current`` against ``baseline``: invalid files and breaking changes."""
    problems: list[str] = []
    now = set(schema_names(current))
    for name in sorted(now):
        schema = load_schema(name, current)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            problems.append(f"{name}: not a valid draft 2020-12 schema: {exc.message}")
            continue
        validator = Draft202012Validator(schema)
        for i, example in enumerate(schema.get("examples", [])):
            problems += [
                f"{name}: examples[{i}]: {e.message}" for e in validator.iter_errors(example)
            ]
        if "$id" in schema and schema["$id"] != f"urn:alb:schema:{name}":
            problems.append(f"{name}: $id must be urn:alb:schema:{name}")
    for name in schema_names(baseline):
        if name not in now:
            problems.append(f"{name}: schema removed")
            continue
        old, new = load_schema(name, baseline), load_schema(name, current)
        problems += [f"{name}: {p}" for p in compare(old, new)]
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest.schema_compat [--schemas DIR] [--baseline DIR] [--update-baseline]``."""
    parser = argparse.ArgumentParser(prog="python -m ingest.schema_compat", description=__doc__)
    parser.add_argument("--schemas", type=Path, default=SCHEMA_DIR)
    parser.add_argument("--baseline", type=Path, default=BASELINE_DIR)
    parser.add_argument("--update-baseline", action="store_true")
    args = parser.parse_args(argv)
    problems = check_dirs(args.schemas, args.baseline)
    for problem in problems:
        print(f"schema-compat: {problem}", file=sys.stderr)
    if problems:
        print(f"schema-compat: {len(problems)} problem(s); a breaking change needs a new topic")
        return 1
    names = schema_names(args.schemas)
    if args.update_baseline:
        args.baseline.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(args.schemas / f"{name}.json", args.baseline / f"{name}.json")
        print(f"schema-compat: baseline updated ({len(names)} schemas)")
    else:
        print(f"schema-compat: {len(names)} schemas compatible with the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
