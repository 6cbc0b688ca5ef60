"""Trace generators and converters: trace.v1 validity, determinism, real-file slices."""

from __future__ import annotations

import csv
import io
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from ingest.contracts import TRACE_SCHEMA, validation_errors
from predictor.cli import trace_app
from predictor.traces.azure import (
    TraceLayoutError,
    convert_azure_functions,
    convert_azure_llm,
    parse_azure_timestamp,
)
from predictor.traces.format import DEFAULT_EPOCH, TraceRecord, read_trace, write_trace
from predictor.traces.synth import SynthParams, synthesize
from tests.services._env import REPO_ROOT, unavailable

REAL = REPO_ROOT / "data" / "traces"
FUNCTIONS = REAL / "invitro_azure2019_1000fn_inv.csv"
LLM_CONV = REAL / "AzureLLMInferenceTrace_conv.csv"
LLM_CODE = REAL / "AzureLLMInferenceTrace_code.csv"


def _real(path: Path) -> Path:
    if not path.exists():
        unavailable(f"real trace {path} is missing", why="CI=true: the real traces must exist")
    return path


def _valid(records: list[TraceRecord]) -> None:
    buf = io.BytesIO()
    write_trace(records, buf)
    for line in buf.getvalue().splitlines():
        assert validation_errors(TRACE_SCHEMA, orjson.loads(line)) == []


# --- synth -------------------------------------------------------------------------


def test_synth_is_seeded_sorted_and_valid() -> None:
    p = SynthParams(seed=3, duration_s=900.0)
    a, b = synthesize(p), synthesize(p)
    assert a == b
    assert a != synthesize(SynthParams(seed=4, duration_s=900.0))
    assert [r.ts for r in a] == sorted(r.ts for r in a)
    start = DEFAULT_EPOCH + timedelta(hours=p.start_hour)
    assert start <= a[0].ts
    assert a[-1].ts < start + timedelta(seconds=900)
    _valid(a)
    assert {r.api for r in a} == {"native", "openai"}
    assert all(r.num_ctx is None for r in a if r.api == "openai")


def test_synth_sessions_follow_their_chain() -> None:
    p = SynthParams(seed=1, duration_s=1800.0, session_types=1, chain_strength=1.0, stay_prob=0.0)
    trace = synthesize(p)
    by_session: dict[str, list[str]] = {}
    for r in trace:
        assert r.session is not None
        by_session.setdefault(r.session, []).append(r.model)
    successor: dict[str, str] = {}
    pairs = 0
    for models in by_session.values():
        for a, b in itertools.pairwise(models):
            assert a != b
            assert successor.setdefault(a, b) == b  # one successor per model
            pairs += 1
    assert pairs > 100


def test_synth_popularity_and_daily_cycle() -> None:
    p = SynthParams(
        seed=2,
        duration_s=24 * 3600.0,
        sessions_per_minute=1.0,
        mean_requests=1.0,
        daily_amplitude=0.8,
        bursts_per_hour=0.0,
        start_hour=0.0,
        peak_hour=14.0,
    )
    trace = synthesize(p)
    hours = Counter(r.ts.hour for r in trace)
    peak = sum(hours[h] for h in (13, 14, 15))
    trough = sum(hours[h] for h in (1, 2, 3))
    assert peak > 3 * trough
    counts = Counter(r.model for r in trace)
    assert counts["model-00"] > counts["model-05"] > counts["model-11"]


def test_synth_bursts_raise_the_rate() -> None:
    def make(bursts: float, factor: float) -> list[TraceRecord]:
        return synthesize(
            SynthParams(
                seed=5,
                duration_s=3600.0,
                daily_amplitude=0.0,
                mean_requests=1.0,
                bursts_per_hour=bursts,
                burst_factor=factor,
            )
        )

    calm = make(0.0, 1.0)
    bursty = make(3.0, 8.0)
    per_min = Counter(int(r.ts.timestamp() // 60) for r in bursty)
    assert max(per_min.values()) > 3 * (len(calm) / 60)


# --- Azure Functions ---------------------------------------------------------------


def _functions_csv(tmp_path: Path) -> Path:
    path = tmp_path / "inv.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["HashFunction", "HashApp", "HashOwner", "minute_1", "minute_2", "minute_3"])
        w.writerow(["f-busy", "app1", "own1", 5, 7, 0])
        w.writerow(["f-mid", "app1", "own1", 0, 3, 2])
        w.writerow(["f-low", "app2", "own2", 1, 0, 0])
    return path


def test_functions_top_n_keeps_counts_and_minutes(tmp_path: Path) -> None:
    reqs = list(convert_azure_functions(_functions_csv(tmp_path), models=2, session="app"))
    assert Counter(r.model for r in reqs) == {"model-00": 12, "model-01": 5}
    for r in reqs:
        minute = int((r.ts - DEFAULT_EPOCH).total_seconds() // 60)
        assert minute in (0, 1, 2)
    per_minute = Counter(int((r.ts - DEFAULT_EPOCH).total_seconds() // 60) for r in reqs)
    assert per_minute == {0: 5, 1: 10, 2: 2}
    assert {r.session for r in reqs} == {"app1"}
    assert [r.ts for r in reqs] == sorted(r.ts for r in reqs)
    _valid(reqs)


def test_functions_offset_hash_mod_slice_and_scale(tmp_path: Path) -> None:
    path = _functions_csv(tmp_path)
    skipped = list(convert_azure_functions(path, models=1, rank_offset=1, session="none"))
    assert len(skipped) == 5
    assert {r.session for r in skipped} == {None}
    everything = list(convert_azure_functions(path, models=2, mapping="hash-mod"))
    assert len(everything) == 18
    sliced = list(convert_azure_functions(path, models=3, start_minute=2, minutes=1))
    assert len(sliced) == 10
    assert all(timedelta(minutes=1) <= r.ts - DEFAULT_EPOCH < timedelta(minutes=2) for r in sliced)
    half = list(convert_azure_functions(path, models=3, scale=0.5, seed=1))
    assert len(half) < 18


def test_functions_refuses_another_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="not an Azure Functions"):
        list(convert_azure_functions(bad))


# The rows of _functions_csv (plus 4 calls of f-low in minute 1440, written when the day
# is that long), to be written in each layout the converter reads.
_FUNCTION_ROWS = [
    ("f-busy", "app1", "own1", {1: 5, 2: 7}),
    ("f-mid", "app1", "own1", {2: 3, 3: 2}),
    ("f-low", "app2", "own2", {1: 1, 1440: 4}),
]
_SAMPLE_HASHES = ("HashFunction", "HashApp", "HashOwner")
_PUBLISHED_HASHES = ("HashOwner", "HashApp", "HashFunction")


def _layout_csv(
    path: Path, hashes: tuple[str, ...], minute: str, *, n: int = 3, trigger: bool = False
) -> Path:
    """_FUNCTION_ROWS with the hash columns in this order, then ``Trigger`` if asked, then
    the minute columns ``minute.format(k)`` for ``k`` in 1..n."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                *hashes,
                *(["Trigger"] if trigger else []),
                *(minute.format(k) for k in range(1, n + 1)),
            ]
        )
        for fn, app, owner, counts in _FUNCTION_ROWS:
            ids = {"HashFunction": fn, "HashApp": app, "HashOwner": owner}
            w.writerow(
                [
                    *(ids[h] for h in hashes),
                    *(["http"] if trigger else []),
                    *(counts.get(k, 0) for k in range(1, n + 1)),
                ]
            )
    return path


def _assert_same_requests(path: Path, sample: Path) -> None:
    """Both files convert to the same records (model, ts, session, hashes, tokens)."""
    cases: list[dict[str, Any]] = [
        {"models": 2, "session": "app"},
        {"models": 3, "mapping": "hash-mod", "session": "owner", "seed": 4},
        {"models": 3, "session": "function", "start_minute": 2, "minutes": 2, "scale": 1.5},
    ]
    for kw in cases:
        got = list(convert_azure_functions(path, **kw))
        assert got, kw
        assert got == list(convert_azure_functions(sample, **kw)), kw


def test_functions_published_layout_matches_the_sample_layout(tmp_path: Path) -> None:
    # The dataset as published: HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440.
    published = _layout_csv(
        tmp_path / "invocations_per_function_md.anon.d01.csv",
        _PUBLISHED_HASHES,
        "{}",
        n=1440,
        trigger=True,
    )
    with published.open(newline="") as fh:
        assert next(csv.reader(fh))[:6] == [*_PUBLISHED_HASHES, "Trigger", "1", "2"]
    sample = _layout_csv(tmp_path / "sample.csv", _SAMPLE_HASHES, "minute_{}", n=1440)
    _assert_same_requests(published, sample)
    reqs = list(convert_azure_functions(published, models=3, session="function"))
    assert Counter(r.model for r in reqs) == {"model-00": 12, "model-01": 5, "model-02": 5}
    assert {r.session for r in reqs} == {"f-busy", "f-mid", "f-low"}
    last = [r for r in reqs if r.ts - DEFAULT_EPOCH >= timedelta(minutes=1439)]
    assert len(last) == 4
    assert all(r.ts - DEFAULT_EPOCH < timedelta(days=1) for r in last)


def test_functions_n_minute_layout(tmp_path: Path) -> None:
    n_minute = _layout_csv(tmp_path / "n_minute.csv", _SAMPLE_HASHES, "{}_minute")
    _assert_same_requests(n_minute, _functions_csv(tmp_path))


def test_functions_hash_columns_in_any_order(tmp_path: Path) -> None:
    reordered = _layout_csv(
        tmp_path / "reordered.csv",
        ("HashApp", "HashOwner", "HashFunction"),
        "minute_{}",
        trigger=True,
    )
    _assert_same_requests(reordered, _functions_csv(tmp_path))


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("a,b,c", "missing HashFunction, HashApp, HashOwner; no minute columns"),
        ("HashOwner,HashApp,Trigger,1,2", "missing HashFunction"),
        ("HashOwner,HashApp,HashFunction,Trigger", "no minute columns"),
        ("HashFunction,HashApp,HashOwner,minute_1,minute_3", "not numbered 1..3 (no minute 2)"),
        ("HashFunction,HashApp,HashOwner,1,2,2", "not numbered 1..2 (minute 2 more than once)"),
        ("HashFunction,HashApp,HashOwner,0_minute,1_minute", "(a minute 0)"),
        ("HashFunction,HashApp,HashApp,HashOwner,1", "HashApp appears 2 times"),
    ],
)
def test_functions_refuses_a_bad_layout_in_one_line(
    tmp_path: Path, header: str, problem: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "\n" + ",".join("1" * len(header.split(","))) + "\n")
    with pytest.raises(TraceLayoutError) as caught:
        convert_azure_functions(bad)  # checked before the first request is asked for
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: not an Azure Functions per-minute file: ")
    assert (
        "expected columns HashFunction, HashApp, HashOwner (any order) and minute columns "
        "1..N named N, minute_N or N_minute" in message
    )
    assert problem in message


def test_functions_refuses_a_ragged_row(tmp_path: Path) -> None:
    bad = tmp_path / "ragged.csv"
    bad.write_text("HashFunction,HashApp,HashOwner,minute_1,minute_2\nf,a,o,1,2\nf2,a,o,1\n")
    with pytest.raises(TraceLayoutError, match=r"ragged.csv, line 3: 4 fields, the header has 5"):
        convert_azure_functions(bad)


def test_functions_real_slice() -> None:
    path = _real(FUNCTIONS)
    reqs = list(convert_azure_functions(path, models=20, rank_offset=200, minutes=3))
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    day = sorted(rows, key=lambda r: (-sum(int(x) for x in r[3:6]), r[0]))
    expected = sum(int(x) for r in day[200:220] for x in r[3:6])
    assert len(reqs) == expected > 0
    assert len({r.model for r in reqs}) <= 20
    _valid(reqs[:500])


# --- Azure LLM ---------------------------------------------------------------------


def test_parse_azure_timestamp() -> None:
    assert parse_azure_timestamp("2023-11-16 18:17:03.9799600") == datetime(
        2023, 11, 16, 18, 17, 3, 979960, tzinfo=UTC
    )


def test_llm_real_files_keep_times_and_tokens() -> None:
    conv, code = _real(LLM_CONV), _real(LLM_CODE)
    reqs = convert_azure_llm([conv, code], sessions_per_file=3, num_ctx="fit")
    assert Counter(r.model for r in reqs) == {"conv-model": 19366, "code-model": 8819}
    assert [r.ts for r in reqs] == sorted(r.ts for r in reqs)
    first = reqs[0]
    assert first.ts == datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC)
    assert (first.prompt_tokens, first.output_tokens) == (374, 44)
    assert all(
        r.num_ctx is not None and r.num_ctx >= (r.prompt_tokens or 0) + (r.output_tokens or 0)
        for r in reqs
    )
    assert len({r.session for r in reqs}) == 6
    _valid(reqs[:500])
    zipf = convert_azure_llm([conv], assign="zipf", models=4)
    assert len({r.model for r in zipf}) == 4


# --- CLI ---------------------------------------------------------------------------

runner = CliRunner()


def test_cli_synth_writes_a_readable_trace(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = runner.invoke(
        trace_app,
        ["synth", "-o", str(out), "--duration", "300", "--seed", "9", "--day", "2026-03-01"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    records = list(read_trace(out))
    assert records == synthesize(
        SynthParams(seed=9, duration_s=300, epoch=datetime(2026, 3, 1, tzinfo=UTC))
    )


def test_cli_convert_functions_and_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "f.jsonl"
    src = _functions_csv(tmp_path)
    result = runner.invoke(
        trace_app, ["convert", "azure-functions", str(src), "-o", str(out), "--models", "2"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(read_trace(out))) == 17
    result = runner.invoke(trace_app, ["synth", "-o", str(out), "--chain-strength", "2"])
    assert result.exit_code == 2
    assert "chain_strength" in result.output
    assert "Traceback" not in result.output


def test_cli_convert_functions_bad_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("HashOwner,HashApp,Trigger,1,2\no,a,http,1,2\n")
    out = tmp_path / "never.jsonl"
    result = runner.invoke(trace_app, ["convert", "azure-functions", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # not an uncaught error
    assert result.stdout == ""
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"alb trace convert azure-functions: {bad}: not an Azure Functions")
    assert "expected columns HashFunction, HashApp, HashOwner" in line
    assert "missing HashFunction" in line
    assert not out.exists()
