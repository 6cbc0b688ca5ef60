"""The disk spool, pure: order, rotation, bounds, prepend, restart, damaged tails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.bus import Record
from ingest.spool import FsyncPolicy, Spool, SpoolConfig, encode


def recs(n: int, start: int = 0, key: str | None = "k") -> list[Record]:
    return [Record("t", key, f"value-{i:05d}".encode()) for i in range(start, start + n)]


def make(tmp_path: Path, **kw: object) -> Spool:
    return Spool(SpoolConfig(tmp_path / "spool", **kw))  # type: ignore[arg-type]


def drain(spool: Spool, batch: int = 7) -> list[Record]:
    out: list[Record] = []
    while (got := spool.peek(batch)) is not None:
        out += got.records
        spool.commit(got)
    return out


def segments(spool: Spool) -> list[Path]:
    return sorted(spool.config.directory.glob("*.seg"))


def test_round_trip_in_order_with_and_without_keys(tmp_path: Path) -> None:
    spool = make(tmp_path)
    assert spool.empty
    assert spool.peek() is None
    written = [*recs(10), *recs(5, 10, key=None), Record("other", "", b"")]
    assert spool.append(written) == 16
    assert not spool.empty
    assert drain(spool) == written
    assert spool.empty
    assert spool.nbytes == 0
    assert segments(spool) == []


def test_peek_does_not_consume_and_partial_commit_resumes(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(10))
    first = spool.peek(4)
    assert first is not None
    assert spool.peek(4) == first
    spool.commit(first, count=2)
    again = spool.peek(4)
    assert again is not None
    assert again.records == recs(4, 2)


def test_segments_rotate_and_are_deleted_once_read(tmp_path: Path) -> None:
    frame = len(encode(recs(1)[0]))
    spool = make(tmp_path, segment_bytes=frame * 10)
    for i in range(5):
        spool.append(recs(10, i * 10))
    assert len(segments(spool)) == 5
    batch = spool.peek(25)
    assert batch is not None
    assert len(batch.records) == 25  # a batch spans segments
    spool.commit(batch)
    assert len(segments(spool)) == 3
    assert drain(spool) == recs(25, 25)


def test_the_byte_limit_refuses_what_does_not_fit(tmp_path: Path) -> None:
    frame = len(encode(recs(1)[0]))
    spool = make(tmp_path, max_bytes=frame * 12)
    assert spool.append(recs(10)) == 10
    assert spool.append(recs(5, 10)) == 2
    assert spool.append(recs(1, 15)) == 0
    assert spool.nbytes == frame * 12
    assert drain(spool) == recs(12)
    assert spool.append(recs(3, 20)) == 3  # room again once read


def test_prepend_goes_before_everything(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(3, 10))
    spool.prepend(recs(3, 0))
    spool.prepend(recs(2, 100))
    assert drain(spool) == [*recs(2, 100), *recs(3, 0), *recs(3, 10)]


def test_prepend_keeps_a_partly_read_segment_position(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(6))
    batch = spool.peek(3)
    assert batch is not None
    spool.commit(batch)
    spool.prepend(recs(2, 50))
    assert drain(spool) == [*recs(2, 50), *recs(3, 3)]


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_a_restart_resumes_after_the_last_commit(tmp_path: Path, policy: FsyncPolicy) -> None:
    spool = make(tmp_path, fsync=policy, segment_bytes=200)
    spool.append(recs(20))
    batch = spool.peek(8)
    assert batch is not None
    spool.commit(batch)
    spool.peek(5)  # read but not committed: handed again after the restart
    del spool  # no close(): as after a crash
    again = make(tmp_path, fsync=policy, segment_bytes=200)
    assert drain(again) == recs(12, 8)
    again.append(recs(2, 99))  # new writes go to a new segment
    assert drain(again) == recs(2, 99)


def test_a_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(5))
    spool.close()
    (seg,) = segments(spool)
    with seg.open("ab") as out:
        out.write(encode(recs(1, 5)[0])[:-3])  # a crash in the middle of a write
    size = seg.stat().st_size
    again = make(tmp_path)
    again.append(recs(2, 10))
    assert drain(again) == [*recs(5), *recs(2, 10)]
    assert again.corrupt_regions == 1
    assert again.corrupt_bytes == size - 5 * len(encode(recs(1)[0]))


def test_a_bad_checksum_ends_that_segment_only(tmp_path: Path) -> None:
    frame = len(encode(recs(1)[0]))
    spool = make(tmp_path, segment_bytes=frame * 4)
    spool.append(recs(4))
    spool.append(recs(4, 4))
    spool.close()
    first = segments(spool)[0]
    data = bytearray(first.read_bytes())
    data[frame * 2 + 12] ^= 0xFF  # flip a byte inside the third record's payload
    first.write_bytes(bytes(data))
    again = make(tmp_path)
    assert drain(again) == [*recs(2), *recs(4, 4)]
    assert again.corrupt_regions == 1
    assert again.corrupt_bytes == frame * 2
    assert again.empty


def test_a_damaged_segment_alone_still_drains(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(1))
    spool.close()
    (seg,) = segments(spool)
    seg.write_bytes(b"\xff" * 20)
    again = make(tmp_path)
    batch = again.peek()
    assert batch is not None
    assert batch.records == []
    again.commit(batch)
    assert again.empty
    assert again.peek() is None
    assert again.corrupt_regions == 1


def test_an_unreadable_cursor_means_reading_again_not_losing(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(recs(4))
    batch = spool.peek(2)
    assert batch is not None
    spool.commit(batch)
    (spool.config.directory / "cursor").write_text("{garbage")
    assert drain(make(tmp_path)) == recs(4)


def test_interval_fsync_never_syncs_in_append_and_waits_for_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    frame = len(encode(recs(1)[0]))
    config = SpoolConfig(tmp_path / "s", segment_bytes=frame, fsync_interval_s=1.0)
    spool = Spool(config, clock=lambda: now[0])
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    spool.append(recs(1))
    spool.append(recs(1, 1))  # rotates: the first segment waits for the next sync
    assert synced == []
    assert not spool.sync_due()
    now[0] = 1.5
    assert spool.sync_due()
    spool.sync_if_due()
    assert len(synced) == 3  # two segments and the directory
    spool.sync_if_due()
    assert len(synced) == 3  # nothing new written
    spool.append(recs(1, 2))
    now[0] = 2.0
    spool.sync_if_due()
    assert len(synced) == 3  # interval not over
    now[0] = 2.6
    spool.sync_if_due()
    assert len(synced) == 6  # the retired second segment, the new one, the directory


async def test_sync_in_a_thread_keeps_data_readable(tmp_path: Path) -> None:
    now = [0.0]
    spool = Spool(SpoolConfig(tmp_path / "s", segment_bytes=100), clock=lambda: now[0])
    spool.append(recs(10))
    now[0] = 5.0
    await spool.sync_in_thread_if_due()
    assert not spool.sync_due()
    assert drain(spool) == recs(10)
    spool.close()


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_close_leaves_no_descriptor_open(tmp_path: Path, policy: FsyncPolicy) -> None:
    before = len(os.listdir("/proc/self/fd"))
    spool = make(tmp_path, fsync=policy, segment_bytes=100)
    spool.append(recs(20))
    spool.prepend(recs(2, 50))
    drain(spool, batch=3)
    spool.append(recs(3, 70))
    spool.close()
    assert len(os.listdir("/proc/self/fd")) == before
