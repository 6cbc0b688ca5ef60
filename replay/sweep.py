"""``alb replay sweep``: one policy over a grid of predictor settings.

The grid is the product of transition window minutes x prefetch confidence threshold x
keep-alive (tail) percentile of the hybrid histogram, applied to the ``ours`` policy's
configuration. Each point is one deterministic replay; the results go to
``sweep.csv``, ``sweep.md`` and two PNG plots (matplotlib, Agg backend): cold-start
rate against the threshold (one line per window and percentile), and idle memory
against cold-start rate (the trade-off every point sits on).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ollamasim.config import FleetConfig
from predictor.core.config import PredictorConfig
from replay.policies import PolicySpec
from replay.report import ReplayReport
from replay.simulate import simulate
from replay.workload import Request

__all__ = ["SweepPoint", "run_sweep", "write_sweep"]

_FIELDS = (
    "window_minutes",
    "confidence_threshold",
    "tail_percentile",
    "cold_start_rate",
    "p50_latency_s",
    "p99_latency_s",
    "p99_ttft_s",
    "prefetch_precision",
    "prefetch_recall",
    "wasted_loads",
    "idle_gb_h",
)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One grid point and its replay."""

    window_minutes: int
    confidence_threshold: float
    tail_percentile: float
    report: ReplayReport

    def row(self) -> dict[str, float | int]:
        r = self.report
        return {
            "window_minutes": self.window_minutes,
            "confidence_threshold": self.confidence_threshold,
            "tail_percentile": self.tail_percentile,
            "cold_start_rate": round(r.cold_start_rate, 5),
            "p50_latency_s": round(r.p50_latency_s, 4),
            "p99_latency_s": round(r.p99_latency_s, 4),
            "p99_ttft_s": round(r.p99_ttft_s, 4),
            "prefetch_precision": round(r.prefetch_precision, 4),
            "prefetch_recall": round(r.prefetch_recall, 4),
            "wasted_loads": r.wasted_loads,
            "idle_gb_h": round(r.idle_gb_h, 3),
        }


def run_sweep(
    fleet: FleetConfig,
    policy: PolicySpec,
    requests: Sequence[Request],
    *,
    windows: Sequence[int],
    thresholds: Sequence[float],
    tails: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> list[SweepPoint]:
    """Replay ``policy`` with each grid point applied to its predictor configuration."""
    base = policy.predictor or PredictorConfig()
    points: list[SweepPoint] = []
    for window, threshold, tail in itertools.product(windows, thresholds, tails):
        cfg = base.replace(
            window_minutes=window,
            confidence_threshold=threshold,
            tail_percentile=tail,
            head_percentile=min(base.head_percentile, tail),
        )
        spec = PolicySpec(
            f"{policy.name} w={window} c={threshold} p={tail}",
            policy.kind,
            predictor=cfg,
            oracle=policy.oracle,
            keep_alive=policy.keep_alive,
            idle_unload_after_s=policy.idle_unload_after_s,
            prefetch=policy.prefetch,
        )
        points.append(SweepPoint(window, threshold, tail, simulate(fleet, spec, requests)))
        if progress is not None:
            progress(1)
    return points


def write_sweep(points: Sequence[SweepPoint], out: Path) -> list[Path]:
    """``sweep.csv``, ``sweep.md`` and the PNG plots under ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [p.row() for p in points]
    csv_path = out / "sweep.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    md_path = out / "sweep.md"
    lines = ["| " + " | ".join(_FIELDS) + " |", "|" + " ---: |" * len(_FIELDS)]
    lines += ["| " + " | ".join(str(r[f]) for f in _FIELDS) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path, *_plots(points, out)]


def _plots(points: Sequence[SweepPoint], out: Path) -> list[Path]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[int, float], list[SweepPoint]] = {}
    for p in points:
        series.setdefault((p.window_minutes, p.tail_percentile), []).append(p)
    for (window, tail), group in sorted(series.items()):
        pts = sorted(group, key=lambda p: p.confidence_threshold)
        ax.plot(
            [p.confidence_threshold for p in pts],
            [100 * p.report.cold_start_rate for p in pts],
            marker="o",
            label=f"window {window} min, keep-alive p{tail * 100:g}",
        )
    ax.set_xlabel("prefetch confidence threshold")
    ax.set_ylabel("cold starts (% of requests)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "sweep_cold.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(
        [100 * p.report.cold_start_rate for p in points],
        [p.report.idle_gb_h for p in points],
        c=[p.confidence_threshold for p in points],
        cmap="viridis",
    )
    ax.set_xlabel("cold starts (% of requests)")
    ax.set_ylabel("idle memory (GB·h)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "sweep_tradeoff.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths
