"""The key data: token format, digests, scopes per route, limits' shares, reservations."""

from __future__ import annotations

import pytest

from bridge.policy.keys import (
    KeyRecord,
    Limits,
    Scope,
    digest,
    mint,
    parse_scopes,
    remint,
    reserve_tokens,
    reset_text,
    scope_for,
    token_id,
    verify,
)


def _record(token_digest: str, **kw: object) -> KeyRecord:
    base: dict[str, object] = {"id": "0123456789ab", "name": "t", "digest": token_digest}
    base.update(scopes=frozenset({Scope.INFERENCE}))
    base.update(kw)
    return KeyRecord(**base)  # type: ignore[arg-type]


def test_a_minted_token_carries_its_id_and_verifies_only_with_its_pepper() -> None:
    token, ident, d = mint(b"pepper")
    assert token.startswith(f"alb_{ident}_")
    assert token_id(token) == ident
    record = _record(d, id=ident)
    assert verify(record, token, b"pepper")
    assert not verify(record, token, b"another")
    assert not verify(record, token + "x", b"pepper")
    assert d != digest(token)  # the pepper is in the digest
    assert token not in str(record.to_json())


def test_rotation_keeps_the_id_and_changes_the_secret() -> None:
    token, ident, d = mint()
    new, nd = remint(ident)
    assert token_id(new) == ident
    assert new != token
    assert nd != d


@pytest.mark.parametrize(
    "token",
    [
        "",
        "alb_",
        "alb_0123456789ab",
        "sk-abc",
        "alb_0123456789AB_" + "x" * 43,
        "alb_xyz_" + "a" * 43,
    ],
)
def test_a_malformed_token_has_no_id(token: str) -> None:
    assert token_id(token) is None


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/api/generate", Scope.INFERENCE),
        ("/v1/chat/completions", Scope.INFERENCE),
        ("/v1/embeddings", Scope.INFERENCE),
        ("/api/tags", Scope.READ),
        ("/api/ps", Scope.READ),
        ("/api/show", Scope.READ),
        ("/v1/models", Scope.READ),
        ("/alb/v1/models", Scope.READ),
        ("/alb/v1/models/llama3:8b/load", Scope.ADMIN),
        ("/alb/v1/decisions", Scope.ADMIN),
        ("/api/pull", Scope.ADMIN),
        ("/api/blobs/sha256:00", Scope.ADMIN),
        ("/healthz", None),
        ("/readyz", None),
        ("/metrics", None),
        ("/alb/ui", None),
        ("/alb/ui/app.js", None),
        ("/alb/ui/style.css", None),
        ("/alb/v1/predictor", Scope.READ),
        ("/alb/v1/events", Scope.READ),
        ("/alb/uix", Scope.READ),
        ("/nowhere", Scope.READ),
    ],
)
def test_each_route_needs_its_scope(path: str, scope: Scope | None) -> None:
    assert scope_for(path) is scope


def test_model_patterns() -> None:
    r = _record("d", models=("llama3*", "qwen2.5:7b"))
    assert r.allows_model("llama3.2:3b")
    assert r.allows_model("qwen2.5:7b")
    assert not r.allows_model("qwen2.5:14b")
    assert not r.allows_model("gpt-oss:120b-cloud")
    assert _record("d").allows_model("anything:latest")


def test_a_record_round_trips_through_json() -> None:
    r = _record("d", limits=Limits(60, 1000, 2, 10_000), priority=3, models=("a*",))
    assert KeyRecord.from_json(r.to_json()) == r
    assert "digest" not in r.public()


def test_scopes_parse_and_an_unknown_one_is_named() -> None:
    assert parse_scopes("inference, READ") == {Scope.INFERENCE, Scope.READ}
    with pytest.raises(ValueError, match="'root'"):
        parse_scopes("read,root")


def test_a_share_divides_each_limit_and_never_drops_below_one() -> None:
    lim = Limits(rpm=60, tpm=1000, concurrency=4, daily_tokens=None)
    assert lim.share(3) == Limits(20, 333, 1, None)
    assert lim.share(1) == lim
    assert Limits(rpm=2).share(3) == Limits(rpm=1)
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)


def test_a_reservation_is_the_prompt_plus_the_smaller_output_cap() -> None:
    assert reserve_tokens(400, None, 256) == 100 + 256
    assert reserve_tokens(400, 10, 256) == 110
    assert reserve_tokens(400, 1000, 256) == 356
    assert reserve_tokens(0, -1, 0) == 1


@pytest.mark.parametrize(
    ("s", "text"), [(0.25, "250ms"), (1, "1s"), (59.2, "1m0s"), (61, "1m1s"), (3723, "1h2m3s")]
)
def test_reset_in_openais_form(s: float, text: str) -> None:
    assert reset_text(s) == text
