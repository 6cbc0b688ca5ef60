"""``alb doctor``: what an operator would check by hand before trusting a deployment,
one line per finding with the fix, exit 1 on a problem.

Checks, with the settings ``alb serve`` would use (``ALB_*``, ``OLLAMA_HOST``):

* each daemon: reachable (``/api/version``), its version, its clock against this
  machine's (the ``Date`` header), and what its loaded runners reveal: the parallel
  slots a runner was sized for (Ollama sizes the KV cache as ``num_ctx x parallel``, so
  ``/api/ps``'s size less the model's file, over its KV bytes per token times its
  context, is ``OLLAMA_NUM_PARALLEL``) against ``ALB_PARALLEL`` / ``?parallel=``, and the
  runners' count against ``max_loaded``. With nothing loaded the parallel setting cannot
  be seen, which is said (``alb serve`` learns it from the first load too);
* NVML: present, and the memory it sees (a ``local`` daemon needs it);
* Kafka (``ALB_KAFKA_BOOTSTRAP_SERVERS``): reachable, every topic present with the
  partitions ``ingest.topics`` specifies;
* Redis (``ALB_REDIS_URL``): reachable;
* settings: headroom, timeouts against each other, the queue against Ollama's default
  ``OLLAMA_MAX_QUEUE`` (512), keys and the listen address.

Each check is a function from what it read to ``Finding``s (``judge_*``), so the rules
are tested without a fleet; ``run`` reads and judges.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import httpx

from bridge.policy.sizing import model_info_from_show
from bridge.settings import DaemonSpec, Settings

Level = Literal["ok", "warn", "fail"]
#: Ollama's default OLLAMA_MAX_QUEUE.
OLLAMA_MAX_QUEUE = 512
#: A clock this far from the daemon's skews idle expiry and the decision log's times.
SKEW_WARN_S = 5.0


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.level]
        return f"{mark}  {self.what}" + (f"  -> {self.fix}" if self.fix else "")


@dataclass(frozen=True, slots=True)
class DaemonView:
    """What one daemon answered (``error`` set when it did not)."""

    spec: DaemonSpec
    version: str | None = None
    error: str | None = None
    skew_s: float | None = None
    #: (model, size, context_length, file size, kv bytes per token) per loaded runner.
    runners: tuple[tuple[str, int, int, int, int], ...] = ()


# --- the rules --------------------------------------------------------------------------


def judge_daemon(view: DaemonView) -> list[Finding]:
    name = view.spec.name
    if view.error is not None:
        return [
            Finding(
                "fail",
                f"daemon {name} ({view.spec.shown_url}): unreachable: {view.error}",
                "start it, or fix its URL in ALB_DAEMONS / OLLAMA_HOST",
            )
        ]
    out = [Finding("ok", f"daemon {name}: reachable, Ollama {view.version}")]
    if view.skew_s is not None and abs(view.skew_s) > SKEW_WARN_S:
        out.append(
            Finding(
                "warn",
                f"daemon {name}: clock {view.skew_s:+.0f} s from this machine's",
                "run NTP (chrony, systemd-timesyncd) on both hosts",
            )
        )
    if not view.runners:
        out.append(
            Finding(
                "ok",
                f"daemon {name}: nothing loaded, so its OLLAMA_NUM_PARALLEL cannot be seen "
                f"(the bridge assumes {view.spec.parallel})",
            )
        )
        return out
    seen = sorted({_parallel(size, ctx, file, kv) for _, size, ctx, file, kv in view.runners})
    seen = [p for p in seen if p > 0]
    if seen and seen != [view.spec.parallel]:
        shown = ", ".join(str(p) for p in seen)
        out.append(
            Finding(
                "fail",
                f"daemon {name}: runners sized for {shown} parallel slot(s), the bridge "
                f"assumes {view.spec.parallel}",
                f"set ALB_PARALLEL={seen[-1]} (or ?parallel={seen[-1]} on this daemon), or "
                f"OLLAMA_NUM_PARALLEL={view.spec.parallel} on the daemon: they must match, "
                "or the bridge queues what the daemon could run, or sends what it queues",
            )
        )
    elif seen:
        out.append(Finding("ok", f"daemon {name}: parallel {seen[0]} matches the bridge"))
    if len(view.runners) > view.spec.max_loaded:
        out.append(
            Finding(
                "fail",
                f"daemon {name}: {len(view.runners)} runners loaded, the bridge allows "
                f"{view.spec.max_loaded}",
                "set ALB_MAX_LOADED (or ?max_loaded=) to OLLAMA_MAX_LOADED_MODELS",
            )
        )
    return out


def _parallel(size: int, ctx: int, file_size: int, kv: int) -> int:
    """The parallel slots a runner of ``size`` bytes at ``ctx`` was sized for."""
    if ctx <= 0 or kv <= 0 or size <= file_size:
        return 0
    return max(1, round((size - file_size) / (kv * ctx)))


def judge_gpu(unavailable: str | None, total: int, count: int, local: bool) -> Finding:
    if unavailable is not None:
        level: Level = "fail" if local else "ok"
        return Finding(
            level,
            f"NVML: not available ({unavailable})",
            "install the NVIDIA driver on this host (a `local` daemon needs it)" if local else "",
        )
    return Finding("ok", f"NVML: {count} GPU(s), {total / 2**30:.1f} GiB")


def judge_kafka(
    bootstrap: str, error: str | None, topics: Sequence[tuple[str, bool, int | None, int]]
) -> list[Finding]:
    """``topics``: (name, exists, partitions, partitions wanted)."""
    if error is not None:
        return [
            Finding(
                "fail",
                f"Kafka {bootstrap}: unreachable: {error}",
                "start the broker or fix ALB_KAFKA_BOOTSTRAP_SERVERS (the bridge spools "
                "events to disk meanwhile)",
            )
        ]
    out = [Finding("ok", f"Kafka {bootstrap}: reachable")]
    for name, exists, partitions, wanted in topics:
        if not exists:
            out.append(
                Finding(
                    "fail",
                    f"Kafka topic {name}: missing",
                    "run `alb topics create` (or start `alb serve` with "
                    "ALB_KAFKA_CREATE_TOPICS=true)",
                )
            )
        elif partitions != wanted:
            out.append(
                Finding(
                    "warn",
                    f"Kafka topic {name}: {partitions} partitions, the spec says {wanted}",
                    "recreate it empty, or leave it: adding partitions breaks per-key order",
                )
            )
    if all(exists and p == w for _, exists, p, w in topics):
        out.append(Finding("ok", f"Kafka: all {len(topics)} topics present as specified"))
    return out


def judge_redis(url: str, error: str | None) -> Finding:
    if error is not None:
        return Finding(
            "fail",
            f"Redis {url}: unreachable: {error}",
            "start Redis or fix ALB_REDIS_URL (replicas run degraded meanwhile: static "
            "slot shares, key limits per replica)",
        )
    return Finding("ok", f"Redis {url}: reachable")


def judge_settings(s: Settings) -> list[Finding]:
    out: list[Finding] = []
    if s.headroom < 0.05:
        out.append(
            Finding(
                "warn",
                f"ALB_HEADROOM={s.headroom:g}: no margin for the memory estimate's error",
                "0.1 (the default) leaves 10 % of each daemon unplanned",
            )
        )
    if s.headroom > 0.5:
        out.append(
            Finding("warn", f"ALB_HEADROOM={s.headroom:g}: half the memory is never used", "")
        )
    if s.request_timeout < s.load_timeout:
        out.append(
            Finding(
                "warn",
                f"ALB_REQUEST_TIMEOUT={s.request_timeout:g} < ALB_LOAD_TIMEOUT={s.load_timeout:g}: "
                "a request that waits for a slow load gives up first",
                "make the request timeout at least the load timeout",
            )
        )
    if s.read_timeout > s.request_timeout:
        out.append(
            Finding(
                "warn",
                f"ALB_READ_TIMEOUT={s.read_timeout:g} > ALB_REQUEST_TIMEOUT="
                f"{s.request_timeout:g}: the read timeout can never fire",
                "",
            )
        )
    if s.queue_capacity > OLLAMA_MAX_QUEUE:
        out.append(
            Finding(
                "warn",
                f"ALB_QUEUE_CAPACITY={s.queue_capacity} > Ollama's OLLAMA_MAX_QUEUE default "
                f"({OLLAMA_MAX_QUEUE})",
                "harmless behind the bridge (it sends a daemon no more than its slots), but "
                "a client going around it gets 503s sooner",
            )
        )
    if s.auth == "none" and s.host not in ("127.0.0.1", "localhost", "::1"):
        out.append(
            Finding(
                "warn",
                f"listening on {s.host} without keys (ALB_ALLOW_OPEN)",
                "ALB_AUTH=keys, and create keys with `alb keys create`",
            )
        )
    if s.workers > 1 and s.redis_url is None:
        out.append(
            Finding("fail", f"ALB_WORKERS={s.workers} without ALB_REDIS_URL", "set ALB_REDIS_URL")
        )
    if not out:
        out.append(Finding("ok", "settings: headroom, timeouts and queue are consistent"))
    return out


# --- reading ---------------------------------------------------------------------------


async def _daemon(c: httpx.AsyncClient, spec: DaemonSpec) -> DaemonView:
    headers = {"Authorization": spec.authorization} if spec.authorization else {}
    try:
        r = await c.get(spec.url + "/api/version", headers=headers)
        r.raise_for_status()
        version = str(r.json().get("version", "?"))
        skew = None
        date = r.headers.get("date")
        if date:
            skew = email.utils.parsedate_to_datetime(date).timestamp() - time.time()
        ps = (await c.get(spec.url + "/api/ps", headers=headers)).json().get("models") or []
        tags = (await c.get(spec.url + "/api/tags", headers=headers)).json().get("models") or []
    except (httpx.HTTPError, ValueError) as exc:
        return DaemonView(spec, error=str(exc) or type(exc).__name__)
    files = {str(t.get("model") or t.get("name")): int(t.get("size") or 0) for t in tags}
    runners = []
    for m in ps:
        name = str(m.get("model") or m.get("name"))
        show = await c.post(spec.url + "/api/show", json={"model": name}, headers=headers)
        info = model_info_from_show(name, files.get(name, 0), show.json())
        runners.append(
            (
                name,
                int(m.get("size") or 0),
                int(m.get("context_length") or 0),
                info.file_size,
                info.kv_bytes_per_token,
            )
        )
    return DaemonView(spec, version=version, skew_s=skew, runners=tuple(runners))


async def _kafka(bootstrap: str) -> tuple[str | None, list[tuple[str, bool, int | None, int]]]:
    from ingest import topics as specs  # noqa: PLC0415  (only with Kafka)

    wanted = {t.name: t.partitions for t in specs.TOPICS}
    try:
        async with asyncio.timeout(15):
            states = await specs.describe_topics(bootstrap, specs.TOPICS)
    except Exception as exc:  # any client error: the broker is not usable
        return str(exc) or type(exc).__name__, []
    return None, [(s.name, s.exists, s.partitions, wanted[s.name]) for s in states]


async def _redis(url: str) -> str | None:
    from redis.asyncio import Redis  # noqa: PLC0415

    client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any client error: unreachable
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


async def run(settings: Settings) -> list[Finding]:
    from bridge.scheduling.gpu import read_gpus  # noqa: PLC0415

    findings: list[Finding] = []
    specs = settings.daemon_specs()
    async with httpx.AsyncClient(timeout=5) as c:
        views = await asyncio.gather(*(_daemon(c, s) for s in specs))
    for view in views:
        findings += judge_daemon(view)
    gpus = read_gpus()
    findings.append(
        judge_gpu(gpus.unavailable, gpus.total, len(gpus.gpus), any(s.local for s in specs))
    )
    if settings.kafka_bootstrap_servers:
        error, topics = await _kafka(settings.kafka_bootstrap_servers)
        findings += judge_kafka(settings.kafka_bootstrap_servers, error, topics)
    else:
        findings.append(Finding("ok", "Kafka: not configured (the embedded bus)"))
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        shown = url.split("@")[-1]
        findings.append(judge_redis(shown, await _redis(url)))
    else:
        findings.append(Finding("ok", "Redis: not configured (one replica)"))
    findings += judge_settings(settings)
    return findings


def report(findings: Sequence[Finding]) -> tuple[str, int]:
    """The printed report and the exit status (1 when anything failed)."""
    lines = [f.line() for f in findings]
    fails = sum(f.level == "fail" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    lines.append(f"{fails} problem(s), {warns} warning(s)")
    return "\n".join(lines), 1 if fails else 0


def main(settings: Settings) -> int:
    text, code = report(asyncio.run(run(settings)))
    print(text)
    return code
