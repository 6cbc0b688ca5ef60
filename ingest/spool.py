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
cursor write, on the caller's thread (safest; ``offer`` then pays a disk flush per
spooled event). ``interval`` (the default) never syncs in ``append``: the owner
calls ``sync_in_thread_if_due`` periodically (the sender does, every
``fsync_interval_s``), which fsyncs the written segments and the directory in a
worker thread, so a power loss costs at most about that interval of events and the
event loop never waits on the disk. ``never`` leaves it to the kernel. A process
crash loses nothing under any policy: written bytes are in the page cache. The
cursor is synced only under ``always``; a stale cursor means duplicates, not loss.

Bounded: ``max_bytes`` counts every segment file; what does not fit is refused
(the caller counts it as dropped). Not thread-safe: one event loop uses it.
"""

from __future__ import annotations

import asyncio
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
        self._dirty = False  # the active segment holds unsynced data
        self._dir_dirty = False  # a segment file was created since the last sync
        self._unsynced: list[int] = []  # retired segments: sync, then close
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
        """Append records in order; return how many fit (the rest are refused).

        Never fsyncs under ``interval`` or ``never``: it is called on the request path.
        """
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
        return count

    def prepend(self, records: Sequence[Record]) -> int:
        """Put records before everything already spooled; return how many fit."""
        blob, count = self._fitting(records)
        if not count:
            return 0
        seq = min(self._sizes, default=_FIRST_SEQ) - 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._sizes[seq] = 0
        try:
            self._write(fd, seq, blob)
        finally:
            self._new_file(fd)
        return count

    def _new_file(self, fd: int) -> None:
        """A segment file was created and ``fd`` will not be written again."""
        if self.config.fsync is FsyncPolicy.ALWAYS:
            os.fsync(fd)
            self._sync_dir()
        self._dir_dirty = True
        self._retire(fd)

    def _retire(self, fd: int) -> None:
        """Close ``fd``, after the next sync under ``interval`` (it may hold unsynced data)."""
        if self.config.fsync is FsyncPolicy.INTERVAL:
            self._unsynced.append(fd)
        else:
            os.close(fd)

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
        self._abandon_active()
        seq = max(self._sizes, default=_FIRST_SEQ - 1) + 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fd, self._active = fd, seq
        self._sizes[seq] = 0
        if self.config.fsync is FsyncPolicy.ALWAYS:
            self._sync_dir()
        self._dir_dirty = True
        return fd, seq

    def _abandon_active(self) -> None:
        if self._fd is not None:
            self._retire(self._fd)
        self._fd, self._active, self._dirty = None, None, False

    # --- syncing (policy ``interval``) ------------------------------------------------

    def sync_due(self) -> bool:
        """Under ``interval``: something is unsynced and ``fsync_interval_s`` has passed."""
        return (
            self.config.fsync is FsyncPolicy.INTERVAL
            and (self._dirty or bool(self._unsynced) or self._dir_dirty)
            and self._clock() - self._last_sync >= self.config.fsync_interval_s
        )

    def _take_sync_work(self) -> tuple[list[int], list[int], bool]:
        to_close = self._unsynced
        self._unsynced = []
        to_sync = list(to_close)
        if self._dirty and self._fd is not None:
            to_sync.append(self._fd)
        directory, self._dirty, self._dir_dirty = self._dir_dirty, False, False
        self._last_sync = self._clock()
        return to_sync, to_close, directory

    def _fsync_all(self, fds: list[int], directory: bool) -> None:
        for fd in fds:
            os.fsync(fd)
        if directory:
            self._sync_dir()

    def sync_if_due(self) -> None:
        """Sync now, on this thread, if ``sync_due()``."""
        if self.sync_due():
            to_sync, to_close, directory = self._take_sync_work()
            try:
                self._fsync_all(to_sync, directory)
            finally:
                for fd in to_close:
                    os.close(fd)

    async def sync_in_thread_if_due(self) -> None:
        """Sync in a worker thread if ``sync_due()``, so the event loop never waits on a disk.

        Only one may run at a time (the sender's sync task); files retired meanwhile
        are closed by the next one, never while a thread may be syncing them.
        """
        if self.sync_due():
            to_sync, to_close, directory = self._take_sync_work()
            try:
                await asyncio.to_thread(self._fsync_all, to_sync, directory)
            finally:
                for fd in to_close:
                    os.close(fd)

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
        """Sync (unless ``never``) and close every open segment. No sync may be running."""
        fds = [*self._unsynced, *([] if self._fd is None else [self._fd])]
        try:
            if self.config.fsync is not FsyncPolicy.NEVER:
                self._fsync_all(fds, self._dir_dirty)
        finally:
            for fd in fds:
                os.close(fd)
            self._unsynced, self._fd, self._active = [], None, None
            self._dirty = self._dir_dirty = False
