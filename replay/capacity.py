"""``alb replay capacity``: every policy over a range of fleet sizes (a capacity sweep).

For each trace, fleet size (``n`` daemons of the fleet file's first daemon's kind,
``replay.fleets.with_daemons``) and policy, one deterministic replay. Reported per
policy and size, averaged over the traces (the synthetic seeds, or one real trace):
cold-start rate (and its causes, ``replay.report``: the model's first load; the model
ready before but nowhere now; a ready runner with too small a context; and cold by
choice, a request that joined a copy still loading while a ready copy held the model,
for a shorter wait), the share of prompts cut to
the runner's context (Ollama's defaults load one context per model and cut longer
prompts; the bridge loads a runner that fits), p50 / p95 / p99 TTFT (and the p99 over
every request, one refused for good counted as never answered), SLO attainment
(the share of requests whose first token came within the SLO, 5 s by default; the
measure of MuxServe and Aegaeon),
requests refused after the clients' retries, loads, replica loads, idle GB·h and
GPU-hours (daemons x the replay's length). Then the smallest fleet at which each policy
reaches 90, 95 and 99 % attainment ("not within the sweep" when it does not), the
number of GPUs the serving literature compares policies by.

Plots (matplotlib, Agg): attainment and cold-start rate against the number of GPUs,
one line per policy; and the reclaim mode's Pareto curve (cold starts against idle
GB·h, "Serverless in the Wild"): ``ours`` with ``ALB_RECLAIM=idle`` over a grid of
keep-alive caps and ``unload_below``, beside ``ours`` (reclaim on demand), on the
fleet where Ollama's default first reaches 95 % (or the largest one, said so).

Runs are independent: ``jobs > 1`` spreads them over processes.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ollamasim.config import FleetConfig
from replay.fleets import with_daemons
from replay.policies import PolicySpec
from replay.report import ReplayReport
from replay.simulate import simulate
from replay.workload import Request

__all__ = [
    "LEVELS",
    "CapacityRun",
    "Summary",
    "frontier",
    "pareto_grid",
    "run_capacity",
    "smallest_fleet",
    "summarise",
    "write_capacity",
]

#: The attainment levels the smallest fleet is reported for.
LEVELS = (0.90, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class CapacityRun:
    """One replay: ``trace`` on ``daemons`` daemons under ``policy``."""

    trace: str
    daemons: int
    policy: str
    report: ReplayReport

    @property
    def gpu_hours(self) -> float:
        return self.daemons * self.report.horizon_s / 3600.0


@dataclass(frozen=True, slots=True)
class Summary:
    """One policy at one fleet size, averaged over the traces."""

    policy: str
    daemons: int
    cold_start_rate: float
    cold_ready_copy_rate: float
    cold_first_rate: float
    cold_gone_rate: float
    cold_context_rate: float
    truncated_rate: float
    p50_ttft_s: float
    p95_ttft_s: float
    p99_ttft_s: float
    #: ``ReplayReport.p99_ttft_all_s`` (None on any trace: None).
    p99_ttft_all_s: float | None
    slo_attainment: float
    refused: int
    loads: int
    replicas: int
    idle_gb_h: float
    gpu_hours: float

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "daemons": self.daemons,
            "cold_start_rate": round(self.cold_start_rate, 5),
            "cold_ready_copy_rate": round(self.cold_ready_copy_rate, 5),
            "cold_first_rate": round(self.cold_first_rate, 5),
            "cold_gone_rate": round(self.cold_gone_rate, 5),
            "cold_context_rate": round(self.cold_context_rate, 5),
            "truncated_rate": round(self.truncated_rate, 5),
            "p50_ttft_s": round(self.p50_ttft_s, 3),
            "p95_ttft_s": round(self.p95_ttft_s, 3),
            "p99_ttft_s": round(self.p99_ttft_s, 3),
            "p99_ttft_all_s": None
            if self.p99_ttft_all_s is None
            else round(self.p99_ttft_all_s, 3),
            "slo_attainment": round(self.slo_attainment, 5),
            "refused": self.refused,
            "loads": self.loads,
            "replicas": self.replicas,
            "idle_gb_h": round(self.idle_gb_h, 2),
            "gpu_hours": round(self.gpu_hours, 2),
        }


_Task = tuple[str, int, PolicySpec, str, Sequence[Request], float]


def _one(task: _Task) -> CapacityRun:
    trace, n, policy, fleet_json, requests, slo_s = task
    fleet = with_daemons(FleetConfig.model_validate_json(fleet_json), n)
    return CapacityRun(trace, n, policy.name, simulate(fleet, policy, requests, slo_s=slo_s))


def run_capacity(
    fleet: FleetConfig,
    policies: Sequence[PolicySpec],
    traces: Mapping[str, Sequence[Request]],
    sizes: Sequence[int],
    *,
    slo_s: float = 5.0,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[CapacityRun]:
    """Every (trace, size, policy) replay, in that order."""
    fleet_json = fleet.model_dump_json()
    tasks: list[_Task] = [
        (label, n, policy, fleet_json, requests, slo_s)
        for label, requests in traces.items()
        for n in sizes
        for policy in policies
    ]
    runs: list[CapacityRun] = []
    if jobs <= 1:
        for task in tasks:
            runs.append(_one(task))
            if progress is not None:
                progress(1)
        return runs
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for run in pool.map(_one, tasks):
            runs.append(run)
            if progress is not None:
                progress(1)
    return runs


def summarise(runs: Sequence[CapacityRun]) -> list[Summary]:
    """One ``Summary`` per (policy, size), in the order the runs came."""
    groups: dict[tuple[str, int], list[CapacityRun]] = {}
    for run in runs:
        groups.setdefault((run.policy, run.daemons), []).append(run)

    def mean(rs: list[CapacityRun], field: str) -> float:
        return statistics.fmean(getattr(r.report, field) for r in rs)

    return [
        Summary(
            policy=policy,
            daemons=n,
            cold_start_rate=mean(rs, "cold_start_rate"),
            cold_ready_copy_rate=mean(rs, "cold_ready_copy_rate"),
            cold_first_rate=mean(rs, "cold_first_rate"),
            cold_gone_rate=mean(rs, "cold_gone_rate"),
            cold_context_rate=mean(rs, "cold_context_rate"),
            truncated_rate=mean(rs, "truncated_rate"),
            p50_ttft_s=mean(rs, "p50_ttft_s"),
            p95_ttft_s=mean(rs, "p95_ttft_s"),
            p99_ttft_s=mean(rs, "p99_ttft_s"),
            p99_ttft_all_s=_mean_or_none([r.report.p99_ttft_all_s for r in rs]),
            slo_attainment=mean(rs, "slo_attainment"),
            refused=sum(r.report.refused_final for r in rs),
            loads=sum(r.report.loads for r in rs),
            replicas=sum(r.report.replica_loads for r in rs),
            idle_gb_h=mean(rs, "idle_gb_h"),
            gpu_hours=statistics.fmean(r.gpu_hours for r in rs),
        )
        for (policy, n), rs in groups.items()
    ]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def smallest_fleet(summaries: Sequence[Summary], policy: str, level: float) -> int | None:
    """The fewest daemons at which ``policy`` attains ``level`` (None: not in the sweep)."""
    sizes = sorted(s.daemons for s in summaries if s.policy == policy and s.slo_attainment >= level)
    return sizes[0] if sizes else None


def pareto_grid(
    ours: PolicySpec,
    keep_alive_caps: Sequence[float] = (60.0, 300.0, 900.0, 1800.0, 3600.0),
    unload_below: Sequence[float] = (0.0, 0.1, 0.2),
) -> list[PolicySpec]:
    """``ours`` in the idle reclaim mode over a grid of keep-alive caps (``ALB_IDLE_
    UNLOAD_AFTER``) and ``unload_below`` (the predictor's early unload)."""
    assert ours.predictor is not None
    return [
        replace(
            ours,
            name=f"{ours.name}-reclaim cap={cap:g}s below={below:g}",
            reclaim="idle",
            idle_unload_after_s=cap,
            predictor=ours.predictor.replace(unload_below=below),
        )
        for cap in keep_alive_caps
        for below in unload_below
    ]


# --- output ---------------------------------------------------------------------------
_TABLES = (
    ("SLO attainment", "slo_attainment", "{:.1%}"),
    ("cold-start rate", "cold_start_rate", "{:.1%}"),
    ("cold: first load of the model", "cold_first_rate", "{:.1%}"),
    ("cold: the model was ready before, nowhere now", "cold_gone_rate", "{:.1%}"),
    ("cold: a ready runner of the model, too small a context", "cold_context_rate", "{:.1%}"),
    ("cold by choice: a ready copy elsewhere", "cold_ready_copy_rate", "{:.1%}"),
    ("prompts truncated", "truncated_rate", "{:.1%}"),
    ("p50 TTFT s", "p50_ttft_s", "{:.2f}"),
    ("p95 TTFT s", "p95_ttft_s", "{:.1f}"),
    ("p99 TTFT s", "p99_ttft_s", "{:.0f}"),
    (
        "p99 TTFT s over every request, refused for good = never answered",
        "p99_ttft_all_s",
        "{:.0f}",
    ),
    ("refused after retries", "refused", "{}"),
    ("loads", "loads", "{}"),
    ("replica loads", "replicas", "{}"),
    ("idle GB·h", "idle_gb_h", "{:.1f}"),
    ("GPU-hours", "gpu_hours", "{:.1f}"),
)


def _cell(fmt: str, value: object) -> str:
    return "never" if value is None else fmt.format(value)


def markdown(summaries: Sequence[Summary], slo_s: float) -> str:
    """A table per metric (a row per policy, a column per fleet size), then the
    smallest fleet per attainment level."""
    policies = list(dict.fromkeys(s.policy for s in summaries))
    sizes = sorted({s.daemons for s in summaries})
    cell = {(s.policy, s.daemons): s for s in summaries}
    out: list[str] = []
    for title, field, fmt in _TABLES:
        label = f"{title} (TTFT <= {slo_s:g} s)" if field == "slo_attainment" else title
        out.append(f"**{label}**\n")
        out.append("| policy | " + " | ".join(f"{n} GPUs" for n in sizes) + " |")
        out.append("| --- |" + " ---: |" * len(sizes))
        for p in policies:
            vals = [_cell(fmt, getattr(cell[(p, n)], field)) for n in sizes if (p, n) in cell]
            out.append(f"| {p} | " + " | ".join(vals) + " |")
        out.append("")
    out.append(f"**Smallest fleet for the SLO (TTFT <= {slo_s:g} s)**\n")
    out.append("| policy | " + " | ".join(f"{lv:.0%}" for lv in LEVELS) + " |")
    out.append("| --- |" + " ---: |" * len(LEVELS))
    for p in policies:
        found = [smallest_fleet(summaries, p, lv) for lv in LEVELS]
        vals = ["not within the sweep" if n is None else f"{n} GPUs" for n in found]
        out.append(f"| {p} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def write_capacity(
    runs: Sequence[CapacityRun],
    out: Path,
    *,
    slo_s: float,
    pareto: Sequence[tuple[str, ReplayReport]] = (),
    pareto_note: str = "",
) -> list[Path]:
    """``capacity.csv`` (every run), ``capacity.md`` and the PNGs; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(runs)
    csv_path = out / "capacity.csv"
    with csv_path.open("w", newline="") as fh:
        fields = ["trace", "daemons", "policy", *_REPORT_FIELDS, "gpu_hours"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in runs:
            row = {f: getattr(r.report, f) for f in _REPORT_FIELDS}
            writer.writerow({"trace": r.trace, "daemons": r.daemons, "policy": r.policy, **row,
                             "gpu_hours": round(r.gpu_hours, 3)})  # fmt: skip
    md_path = out / "capacity.md"
    text = markdown(summaries, slo_s)
    if pareto:
        text += f"\n**Reclaim mode: cold starts against idle memory** ({pareto_note})\n\n"
        text += "| policy | cold-start rate | idle GB·h | SLO attainment |\n"
        text += "| --- | ---: | ---: | ---: |\n"
        for name, rep in pareto:
            text += (
                f"| {name} | {rep.cold_start_rate:.1%} | {rep.idle_gb_h:.1f} "
                f"| {rep.slo_attainment:.1%} |\n"
            )
    md_path.write_text(text)
    paths = [csv_path, md_path, _plot_sweep(summaries, out, slo_s)]
    if pareto:
        paths.append(_plot_pareto(pareto, out, pareto_note))
    return paths


_REPORT_FIELDS = (
    "cold_start_rate",
    "cold_ready_copy_rate",
    "cold_first_rate",
    "cold_gone_rate",
    "cold_context_rate",
    "truncated_rate",
    "p50_ttft_s",
    "p95_ttft_s",
    "p99_ttft_s",
    "p99_ttft_all_s",
    "slo_attainment",
    "refused_final",
    "errors",
    "loads",
    "replica_loads",
    "idle_gb_h",
    "horizon_s",
)


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _plot_sweep(summaries: Sequence[Summary], out: Path, slo_s: float) -> Path:
    plt = _pyplot()
    fig, (att, cold) = plt.subplots(1, 2, figsize=(11, 4.5))
    for policy in dict.fromkeys(s.policy for s in summaries):
        pts = sorted((s for s in summaries if s.policy == policy), key=lambda s: s.daemons)
        xs = [s.daemons for s in pts]
        att.plot(xs, [100 * s.slo_attainment for s in pts], marker="o", label=policy)
        cold.plot(xs, [100 * s.cold_start_rate for s in pts], marker="o", label=policy)
    att.set_ylabel(f"SLO attainment (% of requests, TTFT <= {slo_s:g} s)")
    cold.set_ylabel("cold starts (% of requests)")
    for ax in (att, cold):
        ax.set_xlabel("GPUs (daemons)")
        ax.grid(alpha=0.3)
    att.legend(fontsize=7)
    fig.tight_layout()
    path = out / "capacity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier(points: Sequence[tuple[str, ReplayReport]]) -> list[tuple[str, ReplayReport]]:
    """The points no other point beats on both cold starts and idle memory (identical
    points once, the first name kept), by cold-start rate."""
    seen: dict[tuple[float, float], tuple[str, ReplayReport]] = {}
    for name, rep in points:
        seen.setdefault((rep.cold_start_rate, rep.idle_gb_h), (name, rep))
    keep = [
        (name, rep)
        for (cold, idle), (name, rep) in seen.items()
        if not any(c <= cold and i <= idle and (c, i) != (cold, idle) for c, i in seen)
    ]
    return sorted(keep, key=lambda p: p[1].cold_start_rate)


def _plot_pareto(points: Sequence[tuple[str, ReplayReport]], out: Path, note: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(
        [100 * r.cold_start_rate for _, r in points],
        [r.idle_gb_h for _, r in points],
        color="0.6",
        s=25,
        label="reclaim grid (keep-alive cap x unload_below)",
    )
    best = frontier(points)
    ax.plot(
        [100 * r.cold_start_rate for _, r in best],
        [r.idle_gb_h for _, r in best],
        marker="o",
        color="C0",
        label="Pareto frontier",
    )
    for name, rep in best:
        label = name.split(" ", 1)[-1] if " " in name else name
        ax.annotate(label, (100 * rep.cold_start_rate, rep.idle_gb_h), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("cold starts (% of requests)")
    ax.set_ylabel("idle memory (GB·h)")
    ax.set_title(note, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
