"""``docs/openapi.yaml`` is valid OpenAPI 3.1 and cannot drift from the bridge (issue #16).

It names exactly the routes and methods ``create_app`` serves, each operation names the
key scope ``bridge.policy.keys.scope_for`` asks of its path, and every error answer is
documented in its route's own shape (OpenAI's under ``/v1/``, else Ollama's), with
``Retry-After`` on the 429s and 503s. ``tests/bridge/http/test_schemathesis.py`` checks
the answers themselves against the document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from starlette.routing import Route

from bridge.http.app import create_app
from bridge.policy.keys import scope_for
from bridge.settings import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
#: A concrete value for each path parameter, to ask ``scope_for`` about a real path.
_SAMPLES = {"model": "chatty", "action": "load", "digest": "sha256-" + "0" * 64}


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _served() -> dict[str, set[str]]:
    """Path (as OpenAPI spells it) -> the methods the bridge's router answers."""
    app = create_app(load_settings({"ALB_DAEMONS": "a=http://127.0.0.1:9"}))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route), route
        path = _CONVERTOR.sub(r"{\1}", route.path)
        served.setdefault(path, set()).update(m.lower() for m in route.methods or ())
    return served


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = _document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises OpenAPIValidationError, naming the place
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_the_document_names_every_route_and_no_other() -> None:
    served = _served()
    documented: dict[str, set[str]] = {}
    for path, method, _ in _operations(_document()):
        documented.setdefault(path, set()).add(method)
    assert sorted(documented) == sorted(served)
    for path, methods in served.items():
        # Starlette answers HEAD on every GET route: the document lists it where it
        # matters (probes, version, tags); every other method must be there.
        implied = {"head"} if "get" in methods else set()
        assert methods - implied <= documented[path], (path, methods, documented[path])
        assert documented[path] <= methods, (path, documented[path], methods)


def test_every_operation_names_the_scope_its_path_needs() -> None:
    doc = _document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["in"] == "header"
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert {} in doc["security"], "keys are optional (ALB_AUTH=none)"
    for path, method, op in _operations(doc):
        concrete = re.sub(r"\{(\w+)\}", lambda m: _SAMPLES[m.group(1)], path)
        need = scope_for(concrete)
        assert op["x-alb-scope"] == ("none" if need is None else need.value), (method, path)
        if need is None:
            assert op.get("security") == [{}], (method, path)
        else:  # with ALB_AUTH=keys, no key is a 401
            assert "401" in op["responses"], (method, path)


@pytest.mark.parametrize("status", ["400", "401", "403", "404", "413", "429", "503"])
def test_error_answers_are_documented_in_the_routes_shape(status: str) -> None:
    doc = _document()
    seen = 0
    for path, method, op in _operations(doc):
        if method == "head" or status not in op["responses"]:
            continue
        response = _resolve(doc, op["responses"][status])
        content = response.get("content", {})
        if "application/json" not in content:
            continue
        seen += 1
        schema = content["application/json"]["schema"]
        shape = "OpenAIError" if path.startswith("/v1/") else "NativeError"
        if path in ("/readyz", "/alb/v1/models", "/alb/v1/events") and status == "503":
            continue  # these answer their own status body when the bridge is not running
        assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status)
        if status in ("429", "503"):
            assert "Retry-After" in response.get("headers", {}), (method, path, status)
    assert seen, f"no operation documents a {status}"
