"""The framers, fed real captured streams split at every byte offset."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bridge.wire.framing import End, NDJSONFramer, SSEFramer, TruncatedFrame
from ollamasim.testing import serve_in_thread
from tests.bridge._support import SIM_CONFIG

CHAT = {"model": "chatty", "messages": [{"role": "user", "content": "a <b> & c\u2028"}]}


@pytest.fixture(scope="module")
def captured() -> Iterator[dict[str, bytes]]:
    """Real streams from the simulator: NDJSON, SSE, and the cut variants."""
    with serve_in_thread(SIM_CONFIG) as fleet:
        d = fleet.daemon("a")
        url = d.base_url
        out: dict[str, bytes] = {}
        out["ndjson"] = httpx.post(url + "/api/chat", json=CHAT, timeout=10).content
        v1 = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        out["sse"] = httpx.post(url + "/v1/chat/completions", json=v1, timeout=10).content
        d.faults.error_mid_stream(after_chunks=2, message="boom")
        out["ndjson-error"] = httpx.post(url + "/api/chat", json=CHAT, timeout=10).content
        d.faults.end_stream_early(after_chunks=2)
        out["ndjson-early"] = httpx.post(url + "/api/chat", json=CHAT, timeout=10).content
        out["sse-early"] = httpx.post(url + "/v1/chat/completions", json=v1, timeout=10).content
        yield out


def _feed_all(framer: NDJSONFramer | SSEFramer, pieces: list[bytes]) -> list[bytes]:
    frames = [f for p in pieces for f in framer.feed(p)]
    framer.close()
    return frames


@pytest.mark.parametrize(
    ("name", "terminal"),
    [
        ("ndjson", End.DONE),
        ("ndjson-error", End.ERROR),
        ("ndjson-early", None),
        ("sse", End.DONE),
        ("sse-early", None),
    ],
)
def test_every_split_gives_the_same_whole_frames(
    captured: dict[str, bytes], name: str, terminal: End | None
) -> None:
    raw = captured[name]
    make = NDJSONFramer if name.startswith("ndjson") else SSEFramer
    sep = b"\n" if make is NDJSONFramer else b"\n\n"
    whole = _feed_all(make(), [raw])
    assert b"".join(whole) == raw
    assert all(f.endswith(sep) and sep not in f[: -len(sep)] for f in whole)
    for cut in range(len(raw) + 1):
        framer = make()
        assert _feed_all(framer, [raw[:cut], raw[cut:]]) == whole
        assert framer.terminal is terminal
    framer = make()
    assert _feed_all(framer, [raw[i : i + 1] for i in range(len(raw))]) == whole
    assert framer.terminal is terminal


@pytest.mark.parametrize("name", ["ndjson", "sse"])
def test_a_stream_cut_inside_a_frame_is_truncated(captured: dict[str, bytes], name: str) -> None:
    raw = captured[name]
    framer = NDJSONFramer() if name == "ndjson" else SSEFramer()
    framer.feed(raw[: len(raw) // 2 + 3])
    with pytest.raises(TruncatedFrame):
        framer.close()


def test_sse_crlf_and_comments() -> None:
    framer = SSEFramer()
    frames = framer.feed(b": keep-alive\r\n\r\ndata: {}\r\n\r\ndata: [DONE]\n\n")
    assert frames == [b": keep-alive\r\n\r\n", b"data: {}\r\n\r\n", b"data: [DONE]\n\n"]
    assert framer.terminal is End.DONE


def test_done_inside_a_string_is_not_the_end() -> None:
    framer = NDJSONFramer()
    framer.feed(b'{"response":"\\"done\\":true and \\"error\\"","done":false}\n')
    assert framer.terminal is None
