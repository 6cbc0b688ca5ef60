"""A disk spool: an ordered, bounded, crash-safe queue of records in segment files.

Theory of operation: records live in segment files ``<seq>.seg`` (``seq`` zero-padded,
read in ascending order). Each record is ``u32 length, u32 crc32, payload`` with
payload ``u16 topic length, u16 key length (0xFFFF: no key), topic, key, value``.
``append`` writes a whole batch with one ``os.write`` on the active segment, so a
process crash never leaves half a record written by this process; a machine crash
can (the tail the kernel had not flushed). ``prepend`` writes a segment numbered
before every other one: the sender uses it to put back records that are older than
what the spool already holds, which keeps order. Segments start at 10^12 so there
is room below. ``peek`` reads from the committed position without moving it;
``commit`` moves it, deletes fully read segments and rewrites the ``cursor`` file
(atomic rename), so a restart resumes after the last committed batch (a batch sent
but not committed is sent again: duplicates, never loss).

Damage (a torn tail after a crash, a bad checksum, an impossible length) ends the
segment where it starts: the rest of that segment is skipped and counted in
``corrupt_regions`` / ``corrupt_bytes``, and reading goes on with the next segment.

fsync policy (``FsyncPolicy``): ``always`` syncs after every append, prepend and
cursor write (safest, slowest); ``interval`` (the default) syncs the active segment
when it is rotated and at most every ``fsync_interval_s`` (call ``sync_if_due``
periodically; the sender does), so a power loss costs at most that much; ``never``
leaves it to the kernel. A process crash loses nothing under any policy: written
bytes are in the page cache. The cursor is synced only under ``always``; a stale
cursor means duplicates, not loss.

Bounded: ``max_bytes`` counts every segment file; what does not fit is refused
(the caller counts it as dropped). Not thread-safe: one event loop uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from ingest.bus import Record

_HEADER = struct.Struct("<II")
_META = struct.Struct("<HH")
_NO_KEY = 0xFFFF
_FIRST_SEQ = 10**12
_SUFFIX = ".seg"
_MAX_RECORD = 64 * 1024 * 1024


class FsyncPolicy(StrEnum):
    """When segment data is forced to disk (see the module docstring)."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where and how much. ``max_bytes`` bounds the spool on disk."""

    directory: Path
    max_bytes: int = 1024**3
    segment_bytes: int = 16 * 1024**2
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read by ``peek``; ``commit`` it (or a prefix) once they are safely elsewhere."""

    records: list[Record]
    ends: list[tuple[int, int]]  # (segment, offset) just after each record
    end: tuple[int, int]  # just after everything read, damaged regions included
    nbytes: int


def encode(record: Record) -> bytes:
    """One framed record."""
    topic = record.topic.encode()
    key = b"" if record.key is None else record.key.encode()
    meta = _META.pack(len(topic), _NO_KEY if record.key is None else len(key))
    payload = b"".join((meta, topic, key, record.value))
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> Record:
    topic_len, key_len = _META.unpack_from(payload)
    start = _META.size
    topic = payload[start : start + topic_len].decode()
    start += topic_len
    if key_len == _NO_KEY:
        return Record(topic, None, payload[start:])
    key = payload[start : start + key_len].decode()
    return Record(topic, key, payload[start + key_len :])


class Spool:
    """The segment files in ``config.directory``; opened (and recovered) on construction."""

    def __init__(self, config: SpoolConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._dir = config.directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[int, int] = {
            int(p.stem): p.stat().st_size for p in self._dir.glob(f"*{_SUFFIX}")
        }
        self._starts: dict[int, int] = self._load_cursor()
        self._active: int | None = None  # never append to a segment from before a restart
        self._fd: int | None = None
        self._last_sync = clock()
        self._dirty = False
        self._reported: set[tuple[int, int]] = set()
        self.corrupt_regions = 0
        self.corrupt_bytes = 0
        self._drop_consumed()

    # --- state ------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes on disk (all segment files)."""
        return sum(self._sizes.values())

    @property
    def empty(self) -> bool:
        """Nothing left to read."""
        return all(self._starts.get(seq, 0) >= size for seq, size in self._sizes.items())

    # --- writing ----------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> int:
        """Append records in order; return how many fit (the rest are refused)."""
        blob, count = self._fitting(records)
        if not count:
            return 0
        fd, seq = self._writer()
        try:
            self._write(fd, seq, blob)
        except OSError:
            self._abandon_active()  # a partial record ends that segment; start afresh
            raise
        if self.config.fsync is FsyncPolicy.ALWAYS:
            os.fsync(fd)
        else:
            self._dirty = True
            self.sync_if_due()
        return count

    def prepend(self, records: Sequence[Record]) -> int:
        """Put records before everything already spooled; return how many fit."""
        blob, count = self._fitting(records)
        if not count:
            return 0
        seq = min(self._sizes, default=_FIRST_SEQ) - 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._sizes[seq] = 0
            self._write(fd, seq, blob)
            if self.config.fsync is not FsyncPolicy.NEVER:
                os.fsync(fd)
                self._sync_dir()
        finally:
            os.close(fd)
        return count

    def _fitting(self, records: Sequence[Record]) -> tuple[bytes, int]:
        room = self.config.max_bytes - self.nbytes
        parts: list[bytes] = []
        for record in records:
            frame = encode(record)
            if len(frame) > room:
                break
            room -= len(frame)
            parts.append(frame)
        return b"".join(parts), len(parts)

    def _write(self, fd: int, seq: int, blob: bytes) -> None:
        view = memoryview(blob)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            self._sizes[seq] += written

    def _writer(self) -> tuple[int, int]:
        """(fd, seq) of the active segment, rotating to a new one when it is full."""
        if (
            self._fd is not None
            and self._active is not None
            and self._sizes[self._active] < self.config.segment_bytes
        ):
            return self._fd, self._active
        if self._fd is not None:
            if self.config.fsync is not FsyncPolicy.NEVER:
                os.fsync(self._fd)
            os.close(self._fd)
        seq = max(self._sizes, default=_FIRST_SEQ - 1) + 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fd, self._active = fd, seq
        self._sizes[seq] = 0
        self._dirty = False
        if self.config.fsync is not FsyncPolicy.NEVER:
            self._sync_dir()
        return fd, seq

    def _abandon_active(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._active = None, None

    def sync_if_due(self) -> None:
        """Under ``interval``: fsync the active segment if written and the interval passed."""
        now = self._clock()
        if (
            self._dirty
            and self._fd is not None
            and self.config.fsync is FsyncPolicy.INTERVAL
            and now - self._last_sync >= self.config.fsync_interval_s
        ):
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = now

    # --- reading ----------------------------------------------------------------------

    def peek(self, max_records: int = 500, max_bytes: int = 1024 * 1024) -> SpoolBatch | None:
        """The oldest records not yet committed (None when empty); does not consume them."""
        records: list[Record] = []
        ends: list[tuple[int, int]] = []
        nbytes = 0
        end: tuple[int, int] | None = None
        for seq in sorted(self._sizes):
            offset = self._starts.get(seq, 0)
            size = self._sizes[seq]
            if offset >= size:
                end = (seq, size)
                continue
            with open(self._path(seq), "rb") as segment:
                segment.seek(offset)
                while offset < size and len(records) < max_records and nbytes < max_bytes:
                    record, length = self._read_one(segment, seq, offset, size)
                    offset += length
                    if record is not None:
                        records.append(record)
                        ends.append((seq, offset))
                        nbytes += length
            end = (seq, offset)
            if len(records) >= max_records or nbytes >= max_bytes:
                break
        if end is None or (not records and end == self._head_position()):
            return None
        return SpoolBatch(records, ends, end, nbytes)

    def _read_one(
        self, segment: BinaryIO, seq: int, offset: int, size: int
    ) -> tuple[Record | None, int]:
        read = segment.read
        header = read(_HEADER.size)
        if len(header) == _HEADER.size:
            length, crc = _HEADER.unpack(header)
            if length <= min(_MAX_RECORD, size - offset - _HEADER.size):
                payload = read(length)
                if len(payload) == length and zlib.crc32(payload) == crc:
                    return _decode(payload), _HEADER.size + length
        if (seq, offset) not in self._reported:  # damaged: skip the rest of this segment
            self._reported.add((seq, offset))
            self.corrupt_regions += 1
            self.corrupt_bytes += size - offset
        return None, size - offset

    def _head_position(self) -> tuple[int, int] | None:
        for seq in sorted(self._sizes):
            return (seq, self._starts.get(seq, 0))
        return None

    def commit(self, batch: SpoolBatch, count: int | None = None) -> None:
        """Consume the batch (or its first ``count`` records): later peeks start after it."""
        if count is None or count >= len(batch.records):
            last, offset = batch.end
        elif count <= 0:
            return
        else:
            last, offset = batch.ends[count - 1]
        for seq in list(self._sizes):
            if seq < last:
                self._starts[seq] = self._sizes[seq]
        self._starts[last] = offset
        self._drop_consumed()
        self._save_cursor()

    def _drop_consumed(self) -> None:
        for seq, size in list(self._sizes.items()):
            if self._starts.get(seq, 0) < size:
                continue
            if seq == self._active:
                self._abandon_active()
            with contextlib.suppress(FileNotFoundError):
                self._path(seq).unlink()
            del self._sizes[seq]
            self._starts.pop(seq, None)
        self._starts = {s: o for s, o in self._starts.items() if s in self._sizes and o > 0}

    # --- files ------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:020d}{_SUFFIX}"

    def _load_cursor(self) -> dict[int, int]:
        try:
            data = json.loads((self._dir / "cursor").read_text())
            return {int(seq): int(offset) for seq, offset in data["starts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # none or unreadable: read everything again (duplicates, not loss)

    def _save_cursor(self) -> None:
        tmp = self._dir / "cursor.tmp"
        data = json.dumps({"starts": {str(s): o for s, o in self._starts.items()}})
        with open(tmp, "w") as out:
            out.write(data)
            if self.config.fsync is FsyncPolicy.ALWAYS:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, self._dir / "cursor")

    def _sync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync (unless ``never``) and close the active segment."""
        if self._fd is not None:
            if self.config.fsync is not FsyncPolicy.NEVER:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._active = None
