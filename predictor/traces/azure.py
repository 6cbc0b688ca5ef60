"""Converters from the real Azure traces in ``data/traces/`` to trace v1.

Azure Functions 2019 (Shahrad et al., ATC 2020; the ``invitro`` 1000-function sample)
-----------------------------------------------------------------------------------
Columns ``HashFunction,HashApp,HashOwner,minute_1..minute_1440``: invocations per
function per minute of one day. :func:`convert_azure_functions` maps functions to
models (``top-n``: the functions of volume ranks ``rank_offset .. rank_offset+models-1``,
volume counted over the selected minutes, become ``models`` models, one each, and the
others are dropped; ``hash-mod``: every function goes to model
``sha256(HashFunction) mod models``) and spreads each minute's
count ``c`` over the minute as ``c`` independent uniform instants, which is exactly a
Poisson process conditioned on its count. ``scale`` thins (binomially, < 1) or
multiplies (Poisson, > 1) the counts. Sessions come from ``HashApp`` / ``HashOwner`` /
``HashFunction`` or are left empty. (In the invitro sample the three hashes are equal,
so ``app`` sessions each hold one function; transitions between models then exist
only in arrival order.) Minute ``i`` starts at ``epoch + (i - 1) min``. Output is
produced minute by minute, so a whole day streams without holding 11.6 M requests in
memory.

Azure LLM inference 2023 (Patel et al., "Splitwise", ISCA 2024)
---------------------------------------------------------------
Columns ``TIMESTAMP,ContextTokens,GeneratedTokens``; one file per service (``conv``,
``code``). :func:`convert_azure_llm` keeps the real arrival times (UTC) and token
counts, and assigns models ``per-file`` (one
model per service), ``zipf`` (seeded draws over ``models`` names) or ``hash-mod``
(by request index). Sessions are ``<service>-<k>`` for ``k`` drawn uniformly from
``sessions_per_file``; ``num_ctx="fit"`` asks for the smallest power-of-two context
from 2048 that holds prompt + output.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from predictor.traces.format import DEFAULT_EPOCH, ENDPOINTS, TraceRecord, at, sha256_hex

__all__ = ["convert_azure_functions", "convert_azure_llm", "parse_azure_timestamp"]

FunctionMapping = Literal["top-n", "hash-mod"]
SessionSource = Literal["app", "owner", "function", "none"]
LlmAssign = Literal["per-file", "zipf", "hash-mod"]
_SESSION_COLUMN = {"function": 0, "app": 1, "owner": 2}


def _model_names(models: int, names: Sequence[str] | None) -> list[str]:
    if names:
        return list(names)
    if models < 1:
        raise ValueError("models must be >= 1")
    return [f"model-{i:02d}" for i in range(models)]


def _stable_index(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % n


def convert_azure_functions(
    path: Path,
    *,
    models: int = 20,
    model_names: Sequence[str] | None = None,
    mapping: FunctionMapping = "top-n",
    rank_offset: int = 0,
    session: SessionSource = "app",
    start_minute: int = 1,
    minutes: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
    epoch: datetime = DEFAULT_EPOCH,
    prompt_median: float = 600.0,
    output_median: float = 120.0,
) -> Iterator[TraceRecord]:
    """Requests of the Azure Functions per-minute file (see the module docstring)."""
    names = _model_names(models, model_names)
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header[:3] != ["HashFunction", "HashApp", "HashOwner"]:
            raise ValueError(
                f"{path}: not an Azure Functions per-minute file (header {header[:4]})"
            )
        rows = list(reader)
    total_minutes = len(header) - 3
    first = max(1, start_minute)
    last = total_minutes if minutes is None else min(total_minutes, first + minutes - 1)
    cols = slice(3 + first - 1, 3 + last)
    counts = np.array([[int(x or 0) for x in row[cols]] for row in rows], dtype=np.int64)
    if mapping == "top-n":
        volume = counts.sum(axis=1)
        order = sorted(range(len(rows)), key=lambda i: (-int(volume[i]), rows[i][0]))
        chosen = order[rank_offset : rank_offset + len(names)]
        assign = {i: rank for rank, i in enumerate(chosen)}
    elif mapping == "hash-mod":
        assign = {i: _stable_index(rows[i][0], len(names)) for i in range(len(rows))}
    else:
        raise ValueError(f"mapping must be 'top-n' or 'hash-mod', got {mapping!r}")
    picked = sorted(assign)
    rng = np.random.default_rng(seed)
    sess_col = _SESSION_COLUMN.get(session)
    meta = []
    for i in picked:
        fn, app = rows[i][0], rows[i][1]
        system = sha256_hex("azure-fn-system", fn)
        sess = rows[i][sess_col][:16] if sess_col is not None else None
        meta.append((names[assign[i]], sess, system, sha256_hex("azure-fn-prefix", fn, app)))
    sub = counts[picked]
    for m in range(sub.shape[1]):
        col: np.ndarray = sub[:, m]
        if scale < 1.0:
            col = rng.binomial(col, scale)
        elif scale > 1.0:
            col = rng.poisson(col * scale)
        minute_reqs: list[tuple[float, int]] = []
        for idx in np.flatnonzero(col):
            times = rng.uniform(0.0, 60.0, size=int(col[idx])) + 60.0 * (first - 1 + m)
            minute_reqs.extend((float(t), int(idx)) for t in times)
        minute_reqs.sort()
        for t, j in minute_reqs:
            model, sess, system, prefix = meta[j]
            yield TraceRecord(
                ts=at(epoch, t),
                session=sess,
                model=model,
                api="native",
                endpoint=ENDPOINTS["native"][1],
                prompt_tokens=max(1, round(float(rng.lognormal(math.log(prompt_median), 1.0)))),
                output_tokens=max(1, round(float(rng.lognormal(math.log(output_median), 0.8)))),
                system_prompt_hash=system,
                prefix_hash=prefix,
                num_ctx=None,
                stream=True,
            )


def parse_azure_timestamp(text: str) -> datetime:
    """``2023-11-16 18:17:03.9799600`` (UTC, any number of fraction digits) as a datetime,
    rounded to the microsecond."""
    main, _, frac = text.strip().partition(".")
    base = datetime.fromisoformat(main).replace(tzinfo=UTC)
    return at(base, float("0." + frac) if frac else 0.0)


def _read_llm(path: Path) -> list[tuple[datetime, int, int]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise ValueError(f"{path}: not an Azure LLM inference file (header {header})")
        return [(parse_azure_timestamp(t), int(c), int(g)) for t, c, g in reader]


def _service(path: Path) -> str:
    stem = path.stem
    return stem.rsplit("_", 1)[-1] if "_" in stem else stem


def _fit_ctx(tokens: int) -> int | None:
    ctx = 2048
    while ctx < tokens and ctx < 131072:
        ctx *= 2
    return ctx if ctx >= tokens else None


def convert_azure_llm(
    paths: Sequence[Path],
    *,
    assign: LlmAssign = "per-file",
    models: int = 2,
    model_names: Sequence[str] | None = None,
    sessions_per_file: int = 1,
    api: Literal["native", "openai"] = "openai",
    num_ctx: Literal["none", "fit"] = "none",
    seed: int = 0,
) -> list[TraceRecord]:
    """Requests of one or more Azure LLM inference files, merged by time (real times kept)."""
    if not paths:
        raise ValueError("at least one Azure LLM trace file is needed")
    services = [_service(p) for p in paths]
    if assign == "per-file":
        names = list(model_names) if model_names else [f"{s}-model" for s in services]
        if len(names) < len(paths):
            raise ValueError("per-file assignment needs one model name per file")
    else:
        names = _model_names(models, model_names)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(names) + 1, dtype=float)
    weights /= weights.sum()
    rows = [_read_llm(p) for p in paths]
    merged = heapq.merge(
        *[[(t, k, i, c, g) for i, (t, c, g) in enumerate(r)] for k, r in enumerate(rows)]
    )
    out: list[TraceRecord] = []
    for t, k, i, ctx_tokens, gen_tokens in merged:
        if assign == "per-file":
            model = names[k]
        elif assign == "zipf":
            model = names[int(rng.choice(len(names), p=weights))]
        else:
            model = names[_stable_index(f"{services[k]}:{i}", len(names))]
        session = f"{services[k]}-{int(rng.integers(sessions_per_file))}"
        system = sha256_hex("azure-llm-system", services[k])
        out.append(
            TraceRecord(
                ts=t,
                session=session,
                model=model,
                api=api,
                endpoint=ENDPOINTS[api][0],
                prompt_tokens=ctx_tokens,
                output_tokens=gen_tokens,
                system_prompt_hash=system,
                prefix_hash=sha256_hex("azure-llm-prefix", system, session),
                num_ctx=_fit_ctx(ctx_tokens + gen_tokens) if num_ctx == "fit" else None,
                stream=True,
            )
        )
    return out
