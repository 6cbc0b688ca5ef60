"""One body, one reading: Ollama matches JSON keys to its request structs' fields the
way Go's ``encoding/json`` does (case-insensitively, Unicode simple folding, the last
match winning), and the bridge reads — and forwards — what Ollama would (issue #12).

Facts: OLLAMA_FACTS.md §8. Source: gin ``ShouldBindJSON`` -> ``encoding/json``
(``decode.go`` ``object``: "preferring an exact match but also accepting a
case-insensitive match"; ``fold.go`` ``foldName``: ``unicode.SimpleFold``); the fields
of ``api.GenerateRequest`` in api/types.go at v0.17.4.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge.errors import BadRequest
from bridge.http.routes_native import GENERATE
from bridge.wire.parsing import Kind, parse, rewrite
from tests.contract._support import Target, norm

OPTIONS = {"num_predict": 1, "temperature": 0}


def _generate(target: Target, body: bytes) -> dict[str, Any]:
    with target.client() as c:
        r = c.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    doc = orjson.loads(r.content)
    assert isinstance(doc, dict)
    return doc


def _forwarded(body: bytes) -> bytes:
    """The bytes the bridge sends the daemon for ``body`` (``honour``: keep_alive kept)."""
    return rewrite(body, parse(body, GENERATE), "honour", 0, 86400)


def test_a_case_variant_model_is_the_model(fresh: Target) -> None:
    body = orjson.dumps({"Model": fresh.model, "PROMPT": "hi", "Stream": False, "Options": OPTIONS})
    parsed = parse(body, GENERATE)
    assert parsed.model == fresh.model
    assert parsed.stream is False
    for sent in (body, _forwarded(body)):
        answer = _generate(fresh, sent)
        assert norm(answer["model"]) == norm(fresh.model)
        assert answer["done"] is True
        assert answer["eval_count"] <= 1  # options.num_predict was read too


def test_two_spellings_ollama_takes_the_last_and_the_bridge_refuses(fresh: Target) -> None:
    body = b'{"model":"no-such-model-xyz","Model":%s,"prompt":"hi","stream":false,"options":%s}' % (
        orjson.dumps(fresh.model),
        orjson.dumps(OPTIONS),
    )
    answer = _generate(fresh, body)  # the later key won: the real model answered
    assert norm(answer["model"]) == norm(fresh.model)
    with pytest.raises(BadRequest, match="'model' is given twice"):
        parse(body, GENERATE)


def test_the_kelvin_sign_folds_to_k(fresh: Target) -> None:
    """``\\u212aEEP_ALIVE: 0`` with no prompt is an unload request, to Go and the bridge."""
    loaded = orjson.dumps({"model": fresh.model, "stream": False})
    assert _generate(fresh, loaded)["done_reason"] == "load"
    body = b'{"model":%s,"\\u212aEEP_ALIVE":0,"stream":false}' % orjson.dumps(fresh.model)
    parsed = parse(body, GENERATE)
    assert parsed.kind is Kind.UNLOAD
    assert parsed.keep_alive == 0
    assert set(orjson.loads(_forwarded(body))) == {"model", "keep_alive", "stream"}
    assert _generate(fresh, _forwarded(body))["done_reason"] == "unload"
    assert _generate(fresh, loaded)["done_reason"] == "load"
    assert _generate(fresh, body)["done_reason"] == "unload"
