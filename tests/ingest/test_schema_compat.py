"""The backward-compatibility checker, on crafted pairs of schemas and on the repo."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ingest.contracts import BASELINE_DIR, SCHEMA_DIR
from ingest.schema_compat import check_dirs, compare, main

BASE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "model", "status", "ms"],
    "additionalProperties": True,
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "model": {"type": "string", "minLength": 1, "maxLength": 100},
        "status": {"type": "string", "enum": ["ok", "error"]},
        "ms": {"type": ["number", "null"], "minimum": 0},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def changed(edit: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


COMPATIBLE: dict[str, Any] = {
    "identical": lambda s: None,
    "description added": lambda s: s["properties"]["model"].update(description="the model"),
    "optional field added": lambda s: s["properties"].update(extra={"type": "string"}),
    "enum value added": lambda s: s["properties"]["status"]["enum"].append("rejected"),
    "type widened with null": lambda s: s["properties"]["count"].update(type=["integer", "null"]),
    "integer widened to number": lambda s: s["properties"]["count"].update(type="number"),
    "bound relaxed": lambda s: s["properties"]["model"].update(maxLength=200),
    "bound removed": lambda s: s["properties"]["ms"].pop("minimum"),
    "format removed": lambda s: s["properties"]["id"].pop("format"),
    "examples changed": lambda s: s.update(examples=[{"id": "x"}]),
}
BREAKING: dict[str, tuple[Any, str]] = {
    "field removed": (lambda s: s["properties"].pop("count"), "field 'count' removed"),
    "field renamed": (
        lambda s: s["properties"].update(total=s["properties"].pop("count")),
        "field 'count' removed",
    ),
    "new required field": (
        lambda s: (s["properties"].update(x={"type": "string"}), s["required"].append("x")),
        "new required field 'x'",
    ),
    "optional made required": (lambda s: s["required"].append("count"), "new required field"),
    "required made optional": (lambda s: s["required"].remove("ms"), "no longer required"),
    "type narrowed": (lambda s: s["properties"]["ms"].update(type="number"), "type narrowed"),
    "type changed": (lambda s: s["properties"]["count"].update(type="string"), "type narrowed"),
    "number to integer": (lambda s: s["properties"]["ms"].update(type="integer"), "narrowed"),
    "enum value removed": (
        lambda s: s["properties"]["status"]["enum"].remove("error"),
        "enum value(s) removed: ['error']",
    ),
    "enum added": (lambda s: s["properties"]["model"].update(enum=["a"]), "enum added"),
    "minimum raised": (lambda s: s["properties"]["ms"].update(minimum=1), "minimum narrowed"),
    "maxLength lowered": (
        lambda s: s["properties"]["model"].update(maxLength=50),
        "maxLength narrowed",
    ),
    "maximum added": (lambda s: s["properties"]["count"].update(maximum=9), "maximum narrowed"),
    "pattern added": (lambda s: s["properties"]["model"].update(pattern="^a"), "pattern added"),
    "format changed": (lambda s: s["properties"]["id"].update(format="uri"), "format"),
    "object closed": (
        lambda s: s.update(additionalProperties=False),
        "additionalProperties: was unconstrained",
    ),
    "array items narrowed": (
        lambda s: s["properties"]["tags"]["items"].update(type="integer"),
        "/properties/tags/items: type narrowed",
    ),
    "unknown keyword changed": (
        lambda s: s["properties"]["tags"].update(uniqueItems=True),
        "'uniqueItems' cannot be checked",
    ),
}


@pytest.mark.parametrize("name", COMPATIBLE)
def test_compatible_changes_pass(name: str) -> None:
    assert compare(BASE, changed(COMPATIBLE[name])) == []


@pytest.mark.parametrize("name", BREAKING)
def test_breaking_changes_are_refused_and_named(name: str) -> None:
    edit, message = BREAKING[name]
    problems = compare(BASE, changed(edit))
    assert problems, name
    assert any(message in p for p in problems), problems


def test_nested_objects_are_compared() -> None:
    old: dict[str, Any] = {"type": "object", "properties": {"inputs": BASE}}
    new = copy.deepcopy(old)
    new["properties"]["inputs"]["properties"].pop("model")
    assert compare(old, new) == ["/properties/inputs: field 'model' removed (or renamed)"]


def test_closed_object_may_open_and_grow() -> None:
    old = changed(lambda s: s.update(additionalProperties=False))
    assert compare(old, changed(lambda s: s["properties"].update(x={"type": "string"}))) == []


def test_the_repository_schemas_match_their_baseline() -> None:
    assert check_dirs() == []


def _copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    current, baseline = tmp_path / "schemas", tmp_path / "baseline"
    shutil.copytree(SCHEMA_DIR, current, ignore=shutil.ignore_patterns("baseline", "*.md"))
    shutil.copytree(BASELINE_DIR, baseline)
    return current, baseline


def test_cli_refuses_a_breaking_edit_and_blesses_a_compatible_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current, baseline = _copy_tree(tmp_path)
    path = current / "alb.access-log.v1.json"
    schema = json.loads(path.read_text())
    schema["properties"]["model"]["type"] = "integer"
    path.write_text(json.dumps(schema))
    args = ["--schemas", str(current), "--baseline", str(baseline)]
    assert main([*args, "--update-baseline"]) == 1
    assert "alb.access-log.v1: /properties/model: type narrowed" in capsys.readouterr().err

    schema["properties"]["model"]["type"] = "string"
    schema["properties"]["new_optional"] = {"type": ["string", "null"]}
    path.write_text(json.dumps(schema))
    assert main([*args, "--update-baseline"]) == 0
    assert "new_optional" in (baseline / "alb.access-log.v1.json").read_text()


def test_removed_schema_file_and_bad_example_are_reported(tmp_path: Path) -> None:
    current, baseline = _copy_tree(tmp_path)
    (current / "alb.prefetch.v1.json").unlink()
    path = current / "alb.warm-cache.v1.json"
    schema = json.loads(path.read_text())
    schema["examples"][0]["confidence"] = 7
    path.write_text(json.dumps(schema))
    problems = check_dirs(current, baseline)
    assert "alb.prefetch.v1: schema removed" in problems
    assert any(p.startswith("alb.warm-cache.v1: examples[0]") for p in problems)
