"""Converters from the real Azure traces in ``data/traces/`` to trace v1.

Azure Functions 2019 (Shahrad et al., ATC 2020; the ``invitro`` 1000-function sample)
-----------------------------------------------------------------------------------
Invocations per function per minute of one day. Columns are found by name, in any
order: ``HashFunction``, ``HashApp``, ``HashOwner`` and the minute columns ``1..N``,
named ``N`` (the dataset as Microsoft published it,
``invocations_per_function_md.anon.dNN.csv``: ``HashOwner,HashApp,HashFunction,Trigger,
1..1440``), ``minute_N`` (the ``invitro`` sample: ``HashFunction,HashApp,HashOwner,
minute_1..minute_1440``) or ``N_minute``; other columns (``Trigger``) are ignored. Any
other file raises :class:`TraceLayoutError`, one line naming the expected columns.
:func:`convert_azure_functions` maps functions to
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
import re
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from predictor.traces.format import DEFAULT_EPOCH, ENDPOINTS, TraceRecord, at, sha256_hex

__all__ = [
    "TraceLayoutError",
    "convert_azure_functions",
    "convert_azure_llm",
    "parse_azure_timestamp",
]

FunctionMapping = Literal["top-n", "hash-mod"]
SessionSource = Literal["app", "owner", "function", "none"]
LlmAssign = Literal["per-file", "zipf", "hash-mod"]
_SESSION_COLUMN = {"function": "HashFunction", "app": "HashApp", "owner": "HashOwner"}
_HASH_COLUMNS = ("HashFunction", "HashApp", "HashOwner")
_MINUTE_COLUMN = re.compile(r"(?:minute_)?(\d+)|(\d+)_minute")
_FUNCTIONS_EXPECTED = (
    "expected columns HashFunction, HashApp, HashOwner (any order) and minute columns "
    "1..N named N, minute_N or N_minute"
)


class TraceLayoutError(ValueError):
    """A source file not in the layout its converter reads; the message is one line."""


def _model_names(models: int, names: Sequence[str] | None) -> list[str]:
    if names:
        return list(names)
    if models < 1:
        raise ValueError("models must be >= 1")
    return [f"model-{i:02d}" for i in range(models)]


def _stable_index(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % n


def _few(values: Sequence[object], limit: int = 3) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _functions_layout(path: Path, header: list[str]) -> tuple[dict[str, int], list[int]]:
    """The hash columns' indices by name and the minute columns' indices, minute 1 first;
    :class:`TraceLayoutError` naming the expected columns if the header is not one."""
    names = [h.strip() for h in header]
    problems: list[str] = []
    hashes: dict[str, int] = {}
    missing = [c for c in _HASH_COLUMNS if c not in names]
    if missing:
        problems.append("missing " + ", ".join(missing))
    for c in _HASH_COLUMNS:
        where = [i for i, h in enumerate(names) if h == c]
        if len(where) > 1:
            problems.append(f"{c} appears {len(where)} times")
        elif where:
            hashes[c] = where[0]
    by_minute: dict[int, list[int]] = {}
    for i, h in enumerate(names):
        if m := _MINUTE_COLUMN.fullmatch(h):
            by_minute.setdefault(int(m.group(1) or m.group(2)), []).append(i)
    n = max(by_minute, default=0)
    if not by_minute:
        problems.append("no minute columns")
    else:
        gaps = [k for k in range(1, n + 1) if k not in by_minute]
        twice = sorted(k for k, cols in by_minute.items() if len(cols) > 1)
        what = ["a minute 0"] if 0 in by_minute else []
        what += [f"no minute {_few(gaps)}"] if gaps else []
        what += [f"minute {_few(twice)} more than once"] if twice else []
        if what:
            problems.append(f"minute columns not numbered 1..{n} ({'; '.join(what)})")
    if problems:
        shown = _few(names, 6) + (f" ({len(names)} columns)" if len(names) > 6 else "")
        raise TraceLayoutError(
            f"{path}: not an Azure Functions per-minute file: {_FUNCTIONS_EXPECTED}; "
            f"{'; '.join(problems)} (header: {shown})"
        )
    return hashes, [by_minute[k][0] for k in range(1, n + 1)]


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
    """Requests of the Azure Functions per-minute file (see the module docstring).

    The file is read and checked here (a bad one raises :class:`TraceLayoutError`
    before anything is yielded); the requests are then produced minute by minute."""
    names = _model_names(models, model_names)
    if mapping not in ("top-n", "hash-mod"):
        raise ValueError(f"mapping must be 'top-n' or 'hash-mod', got {mapping!r}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise TraceLayoutError(
                f"{path}: not an Azure Functions per-minute file: {_FUNCTIONS_EXPECTED}; "
                "the file is empty"
            )
        hashes, minute_cols = _functions_layout(path, header)
        total_minutes = len(minute_cols)
        first = max(1, start_minute)
        last = total_minutes if minutes is None else min(total_minutes, first + minutes - 1)
        selected = minute_cols[first - 1 : max(first - 1, last)]
        ids: dict[str, list[str]] = {c: [] for c in _HASH_COLUMNS}
        flat = array("q")
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise TraceLayoutError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            try:
                flat.extend(int(row[j] or 0) for j in selected)
            except ValueError:
                raise TraceLayoutError(
                    f"{path}, line {reader.line_num}: a minute count is not an integer"
                ) from None
            for c, j in hashes.items():
                ids[c].append(row[j])
    fns = ids["HashFunction"]
    counts = np.frombuffer(flat, dtype=np.int64).reshape(len(fns), len(selected))
    return _functions_requests(
        counts,
        fns,
        ids["HashApp"],
        ids[_SESSION_COLUMN[session]] if session in _SESSION_COLUMN else None,
        names=names,
        mapping=mapping,
        rank_offset=rank_offset,
        first=first,
        scale=scale,
        seed=seed,
        epoch=epoch,
        prompt_median=prompt_median,
        output_median=output_median,
    )


def _functions_requests(
    counts: np.ndarray,
    fns: list[str],
    apps: list[str],
    sessions: list[str] | None,
    *,
    names: list[str],
    mapping: FunctionMapping,
    rank_offset: int,
    first: int,
    scale: float,
    seed: int,
    epoch: datetime,
    prompt_median: float,
    output_median: float,
) -> Iterator[TraceRecord]:
    if mapping == "top-n":
        volume = counts.sum(axis=1)
        order = sorted(range(len(fns)), key=lambda i: (-int(volume[i]), fns[i]))
        chosen = order[rank_offset : rank_offset + len(names)]
        assign = {i: rank for rank, i in enumerate(chosen)}
    else:
        assign = {i: _stable_index(fns[i], len(names)) for i in range(len(fns))}
    picked = sorted(assign)
    rng = np.random.default_rng(seed)
    meta = []
    for i in picked:
        fn, app = fns[i], apps[i]
        system = sha256_hex("azure-fn-system", fn)
        sess = sessions[i][:16] if sessions is not None else None
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
