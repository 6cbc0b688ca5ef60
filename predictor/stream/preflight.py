"""Before the Faust worker starts: does Kafka answer at the bootstrap servers?

Faust reports an unreachable broker as a traceback (``KafkaConnectionError: Unable to
bootstrap ...``) after its own retries. :func:`check_kafka` asks first, within
``timeout_s``: a TCP connect to each server (its error is the reason people need:
connection refused, unknown host, timed out), then a metadata request through aiokafka
to the first server that accepted (a port that is open but not Kafka fails here).
:class:`KafkaUnreachable` carries the one-line message that ``alb predictor`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from predictor.stream.settings import split_servers

__all__ = ["KafkaUnreachable", "check_kafka"]


class KafkaUnreachable(RuntimeError):
    """No bootstrap server answered as Kafka; the message says where and why."""


async def check_kafka(bootstrap_servers: str, *, timeout_s: float) -> None:
    """Return when a bootstrap server answers a metadata request; else raise
    :class:`KafkaUnreachable` naming the servers and the reason (within ``timeout_s``
    per server). ``bootstrap_servers`` is validated already (:class:`PredictorSettings`)."""
    servers = split_servers(bootstrap_servers)
    where = ",".join(f"{h}:{p}" for h, p in servers)
    reasons: list[str] = []
    for host, port in servers:
        reason = await _tcp_reason(host, port, timeout_s)
        if reason is None:
            reason = await _metadata_reason(host, port, timeout_s)
            if reason is None:
                return
        reasons.append(reason if len(servers) == 1 else f"{host}:{port}: {reason}")
    raise KafkaUnreachable(f"cannot reach Kafka at {where} ({'; '.join(reasons)})")


async def _tcp_reason(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails, or None when it opens."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return f"no TCP connection within {timeout_s:g}s"
    except OSError as exc:
        # asyncio puts "Connect call failed (...)" in strerror; the errno says it better.
        if exc.errno is not None and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            return os.strerror(exc.errno)
        return exc.strerror or str(exc) or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _metadata_reason(host: str, port: int, timeout_s: float) -> str | None:
    """Why ``host:port`` does not answer a Kafka metadata request, or None when it does."""
    client = AIOKafkaClient(
        bootstrap_servers=f"{host}:{port}", request_timeout_ms=max(1, int(timeout_s * 1000))
    )
    try:
        with _quiet("aiokafka"):  # its own error lines would repeat our one line
            await asyncio.wait_for(client.bootstrap(), timeout_s)
    except TimeoutError:
        return f"the port is open but no Kafka metadata came within {timeout_s:g}s"
    except KafkaError:
        return "the port is open but did not answer as Kafka"
    finally:
        await client.close()
    return None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
