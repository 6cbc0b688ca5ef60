"""``alb keys create|list|revoke|rotate|usage``: API keys in the bridge's key store.

The store is the one the bridge uses with the same settings: Redis with
``ALB_REDIS_URL`` (and ``ALB_COORD_NAMESPACE``), else the SQLite file
(``ALB_KEYS_FILE``, default ``$XDG_STATE_HOME/alb/keys.sqlite``); ``ALB_KEYS_PEPPER``
must match the bridge's. A new or rotated key is printed once: only its digest is
kept. Running replicas see a change within ``ALB_KEYS_REFRESH`` seconds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import orjson
import typer

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate, usage.", no_args_is_help=True)

T = TypeVar("T")


def _run(work: Callable[[Any, bytes | None], Awaitable[T]]) -> T:
    from bridge.settings import SettingsError, load_settings
    from bridge.tenancy import open_store, pepper_of

    try:
        settings = load_settings(allow_open="true")
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> T:
        store = open_store(settings)
        try:
            return await work(store, pepper_of(settings))
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    except (LookupError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: the key store is unreachable: {exc}", err=True)
        raise typer.Exit(1) from None


def _emit(doc: Any, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        typer.echo(text)


@keys_app.command()
def create(  # noqa: PLR0917 (typer: one parameter per option)
    name: Annotated[str, typer.Option(help="What the key is for (shown in lists).")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: inference, read, admin.")
    ] = "inference,read",
    models: Annotated[
        str, typer.Option(help="Comma-separated model patterns (fnmatch: llama3*); empty: all.")
    ] = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens (prompt + output) per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests at once.")] = None,
    daily_tokens: Annotated[int | None, typer.Option(help="Tokens per UTC day.")] = None,
    priority: Annotated[int, typer.Option(help="Weight in each model's fair queue, 1-16.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it (once: only its digest is stored)."""
    from bridge.policy.keys import Limits, parse_scopes
    from bridge.tenancy import keyring

    try:
        scope_set = parse_scopes(scopes)
        limits = Limits(rpm, tpm, concurrency, daily_tokens)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    patterns = [m for m in models.split(",") if m.strip()]

    async def work(store: Any, pepper: bytes | None) -> tuple[str, Any]:
        return await keyring.create(
            store, name, scope_set, models=patterns, limits=limits, priority=priority,
            pepper=pepper,
        )  # fmt: skip

    token, record = _run(work)
    _emit(
        {"key": token, **record.public()},
        as_json,
        f"{token}\n(key {record.id}: shown once, store it now)",
    )


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The keys (never their secrets)."""

    async def work(store: Any, pepper: bytes | None) -> list[Any]:
        return list(await store.all())

    records = _run(work)
    rows = [r.public() for r in records]
    lines = [f"{'id':<12}  {'name':<20}  {'state':<7}  scopes / models / limits"]
    for r in records:
        lim = r.limits
        limits = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("rpm", lim.rpm), ("tpm", lim.tpm), ("concurrency", lim.concurrency),
                ("daily_tokens", lim.daily_tokens),
            )
            if v is not None
        )  # fmt: skip
        lines.append(
            f"{r.id:<12}  {r.name[:20]:<20}  {'active' if r.active else 'revoked':<7}  "
            f"{','.join(sorted(s.value for s in r.scopes))} / {','.join(r.models) or '*'} / "
            f"{limits or 'no limits'} / priority {r.priority}"
        )
    _emit(rows, as_json, "\n".join(lines))


@keys_app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key (every replica refuses it within ALB_KEYS_REFRESH)."""
    from bridge.tenancy import keyring

    async def work(store: Any, pepper: bytes | None) -> Any:
        return await keyring.revoke(store, key_id)

    record = _run(work)
    typer.echo(f"key {record.id} revoked")


@keys_app.command()
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A new secret for a key (same id, scopes and limits); the old one stops working."""
    from bridge.tenancy import keyring

    async def work(store: Any, pepper: bytes | None) -> tuple[str, Any]:
        return await keyring.rotate(store, key_id, pepper)

    token, record = _run(work)
    _emit(
        {"key": token, **record.public()},
        as_json,
        f"{token}\n(key {record.id} rotated: shown once, the old secret no longer works)",
    )


@keys_app.command()
def usage(
    days: Annotated[int, typer.Option(help="UTC days back from today.", min=1, max=40)] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests and tokens per key per UTC day (the bridge writes them every few seconds)."""
    today = datetime.now(UTC).date()
    wanted = [(today - timedelta(days=i)).isoformat() for i in range(days)]

    async def work(store: Any, pepper: bytes | None) -> list[Any]:
        return list(await store.usage(wanted))

    rows = _run(work)
    docs = [
        {
            "day": u.day,
            "key": u.key_id,
            "requests": u.requests,
            "prompt_tokens": u.prompt_tokens,
            "output_tokens": u.output_tokens,
        }
        for u in rows
    ]
    lines = [f"{'day':<10}  {'key':<12}  {'requests':>9}  {'prompt':>10}  {'output':>10}"]
    lines += [
        f"{u.day:<10}  {u.key_id:<12}  {u.requests:>9}  "
        f"{u.prompt_tokens:>10}  {u.output_tokens:>10}"
        for u in rows
    ]
    _emit(docs, as_json, "\n".join(lines))
