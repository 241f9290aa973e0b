"""The durable local usage log: an append-only, crash-safe queue of `UsageRecord`s on disk.

A request's usage record is appended here before its response completes; the shipper moves
records from here to PostgreSQL later, so a database outage never costs a record and never
blocks a request for longer than one local fsync.

Layout of the log directory:

    LOCK                          flock'ed by the one process that owns the directory
    00000000000000000001.seg      segments, each a run of frames, oldest first
    CURSOR                        how far shipping has got (segment id + byte offset)

A frame is `[u32 length][u32 crc32(payload)][payload]`, little-endian, the payload being the
msgpack encoding of one record. Appends are group-committed: one writer task writes everything
queued since its last write with a single `write` and a single `fdatasync`, then acknowledges
all of it, so the fsync cost is shared by every concurrent request.

After a crash the last segment may end in a torn frame (a partial write, or bytes that never
reached the disk); opening the log truncates that tail. Only unacknowledged records can be in
it: a record is acknowledged only after the fsync covering it has returned.

Health (`health()`, cheap enough to ask per request): the log is unhealthy while its disk has
less than `min_free_bytes` free, after a write or fsync failed, and once closed. The gateway
refuses new requests while it is unhealthy (nothing is served that cannot be recorded) and
says so on `/healthz`. A failed write is cut off again, so the log stays well-formed; a failed
fsync poisons the active segment (the kernel may have dropped its dirty pages), so the next
write first truncates that segment back to its last acknowledged byte, syncs it, seals it and
starts a new one. An unhealthy log probes itself (an empty group commit, at most once a
second, only when the disk has room again) and is healthy again as soon as one succeeds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import msgspec

from metering.usage.record import UsageRecord

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
HEADER_SIZE = _HEADER.size
MAX_PAYLOAD = 1 << 20
"""A record is a few hundred bytes; a length beyond this is corruption, not a record."""

SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "LOCK"
CURSOR_NAME = "CURSOR"
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MIN_FREE_BYTES = 16 << 20
"""Below this much free space on its disk the log reports itself unhealthy: the gateway stops
admitting requests while records of those in flight still fit."""
_FREE_CHECK_S = 0.25
_PROBE_EVERY_S = 1.0
_READ_CHUNK = 1 << 20
_AGE_GRANULARITY_S = 1.0
"""Appends within this window share one age bucket, so an outage of hours keeps few buckets."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UsageRecord)


class UsageLogError(Exception):
    """The usage log cannot accept or return records."""


class UsageLogLocked(UsageLogError):
    """Another process (or another `UsageLog` in this one) owns the directory."""


class UsageLogCorrupt(UsageLogError):
    """A frame that was acknowledged earlier no longer verifies: the disk lost data."""


@dataclasses.dataclass(frozen=True, order=True)
class Cursor:
    """A position in the log: every record before `offset` in `segment` (and in every earlier
    segment) is covered. `ordinal` counts records since the log was opened; it exists only in
    memory, for cheap pending counts, and takes no part in ordering."""

    segment: int
    offset: int
    ordinal: int = dataclasses.field(default=0, compare=False)


class _CursorFile(msgspec.Struct):
    segment: int
    offset: int


def encode_frame(record: UsageRecord) -> bytes:
    payload = _encoder.encode(record)
    if len(payload) > MAX_PAYLOAD:
        raise UsageLogError(f"usage record {record.request_id!r} is {len(payload)} bytes encoded")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_frames(
    buf: bytes | memoryview, limit: int | None = None
) -> tuple[list[UsageRecord], int]:
    """Decode whole, valid frames from the start of `buf`.

    Returns the records and the number of bytes they span; it stops at the first partial or
    invalid frame (or after `limit` records), so the caller can tell a clean end from a bad one.
    """
    view = memoryview(buf)
    records: list[UsageRecord] = []
    pos = 0
    end = len(view)
    while (limit is None or len(records) < limit) and end - pos >= HEADER_SIZE:
        length, crc = _HEADER.unpack_from(view, pos)
        # Zero-filled space (a preallocated but unwritten extent after power loss) has a crc32
        # of 0 for an empty payload; no record encodes to zero bytes, so reject it explicitly.
        if length == 0 or length > MAX_PAYLOAD or end - pos - HEADER_SIZE < length:
            break
        payload = view[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(_decoder.decode(payload))
        except msgspec.DecodeError:
            break
        pos += HEADER_SIZE + length
    return records, pos


def scan_segment(path: Path) -> tuple[int, int, int]:
    """Verify a segment frame by frame: (valid record count, valid byte length, file size)."""
    count = 0
    valid = 0
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        carry = b""
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                break
            buf = carry + chunk
            records, used = decode_frames(buf)
            count += len(records)
            valid += used
            carry = buf[used:]
            if len(carry) > MAX_PAYLOAD + HEADER_SIZE:
                break  # a frame that can never complete: everything from here is bad
    return count, valid, size


def segment_name(segment_id: int) -> str:
    return f"{segment_id:020d}{SEGMENT_SUFFIX}"


def _list_segments(directory: Path) -> list[int]:
    ids = []
    for p in directory.iterdir():
        if p.name.endswith(SEGMENT_SUFFIX) and p.name[: -len(SEGMENT_SUFFIX)].isdigit():
            ids.append(int(p.name[: -len(SEGMENT_SUFFIX)]))
    return sorted(ids)


def _fsync_dir(directory: Path) -> None:
    # A created, renamed or deleted file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Pending(msgspec.Struct):
    data: bytes
    count: int
    future: asyncio.Future[None]


class UsageLog:
    """An open usage log directory. Create with `await UsageLog.open(path)`."""

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ):
        """Not usable until opened: prefer `await UsageLog.open(directory)`."""
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._min_free_bytes = min_free_bytes
        self._write_error: BaseException | None = None
        """The last group commit failed (cleared by the next one that succeeds)."""
        self._free_bytes: int | None = None
        self._free_checked = -_FREE_CHECK_S
        self._probed = -_PROBE_EVERY_S
        self._probe: asyncio.Task[None] | None = None
        self._sealed_in_thread: list[tuple[int, int]] = []
        """Segments the writer thread sealed while recovering, for the loop to note."""
        self._lock_fd = -1
        self._seg_fd = -1
        self._seg_id = 0
        self._seg_size = 0
        # Sizes of the immutable segments still on disk; touched only on the event loop.
        self._sealed_sizes: dict[int, int] = {}
        self._opened = False
        self._closed = False
        self._failed: BaseException | None = None
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._ship_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._shipped = Cursor(1, 0, 0)
        self._durable = Cursor(1, 0, 0)
        self._appended = 0
        # (first ordinal of the bucket, monotonic time of its first append)
        self._age_buckets: collections.deque[tuple[int, float]] = collections.deque()

    @classmethod
    async def open(
        cls,
        directory: Path | str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> UsageLog:
        """Lock the directory, recover it after any crash, and start the writer."""
        self = cls(directory, segment_bytes=segment_bytes, min_free_bytes=min_free_bytes)
        await asyncio.to_thread(self._open_sync)
        self._opened = True
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name=f"usage-log-writer:{self._directory}"
        )
        return self

    # --- opening and recovery -------------------------------------------------------------

    def _open_sync(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._recover()
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        fd = os.open(self._directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageLogLocked(
                f"usage log {self._directory} is already open (owner pid {holder}); "
                "each gateway process needs its own log directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def _recover(self) -> None:
        segments = _list_segments(self._directory)
        cursor = self._read_cursor_file()
        if cursor is None:
            cursor = Cursor(segments[0] if segments else 1, 0)
        # A crash between writing the cursor and deleting what it covers leaves these behind.
        for seg in [s for s in segments if s < cursor.segment]:
            (self._directory / segment_name(seg)).unlink()
        segments = [s for s in segments if s >= cursor.segment]

        pending = 0
        for i, seg in enumerate(segments):
            path = self._directory / segment_name(seg)
            count, valid, size = scan_segment(path)
            if valid < size:
                if i != len(segments) - 1:
                    # Only the newest segment can be mid-write at a crash; earlier ones were
                    # fsynced whole before the next one was created.
                    raise UsageLogCorrupt(
                        f"{path}: invalid frame at byte {valid} of {size} in a sealed segment"
                    )
                self._truncate_torn_tail(path, valid, size)
            self._sealed_sizes[seg] = valid
            if seg == cursor.segment:
                if cursor.offset > valid:
                    raise UsageLogCorrupt(
                        f"{path}: shipped cursor at byte {cursor.offset} is past the end ({valid})"
                    )
                skipped, used = self._count_frames(path, cursor.offset)
                if used != cursor.offset:
                    raise UsageLogCorrupt(f"{path}: shipped cursor {cursor.offset} is mid-frame")
                count -= skipped
            pending += count

        # Always append to a fresh segment: the old ones stay immutable from here on.
        self._seg_id = max([*segments, cursor.segment]) + 1
        self._seg_size = 0
        self._seg_fd = self._create_segment(self._seg_id)

        self._shipped = Cursor(cursor.segment, cursor.offset, 0)
        self._appended = pending
        self._durable = Cursor(self._seg_id, 0, pending)
        if pending:
            self._age_buckets.append((0, self._recovered_age_origin(cursor)))
        if pending:
            log.info("usage log %s: %d unshipped records recovered", self._directory, pending)

    def _count_frames(self, path: Path, upto: int) -> tuple[int, int]:
        with path.open("rb") as f:
            records, used = decode_frames(f.read(upto))
        return len(records), used

    def _truncate_torn_tail(self, path: Path, valid: int, size: int) -> None:
        log.warning(
            "usage log %s: truncating %d bytes of torn or corrupt tail at byte %d "
            "(unacknowledged writes cut short by a crash); saved to %s.torn",
            path,
            size - valid,
            valid,
            path.name,
        )
        with path.open("r+b") as f:
            f.seek(valid)
            tail = f.read()
            # Keep the bytes for forensics: if this was corruption rather than a torn write,
            # an operator can still look at them.
            torn = path.with_name(f"{path.name}.torn")
            with torn.open("ab") as t:
                t.write(tail)
                t.flush()
                os.fsync(t.fileno())
            f.truncate(valid)
            f.flush()
            os.fsync(f.fileno())

    def _recovered_age_origin(self, cursor: Cursor) -> float:
        """A monotonic timestamp for the oldest record left by an earlier process."""
        path = self._directory / segment_name(cursor.segment)
        try:
            with path.open("rb") as f:
                f.seek(cursor.offset)
                records, _ = decode_frames(f.read(HEADER_SIZE + MAX_PAYLOAD), limit=1)
        except FileNotFoundError:
            records = []
        now = time.monotonic()
        if not records or records[0].started_at.tzinfo is None:
            return now
        age = max(0.0, time.time() - records[0].started_at.timestamp())
        return now - age

    def _read_cursor_file(self) -> Cursor | None:
        try:
            raw = (self._directory / CURSOR_NAME).read_bytes()
        except FileNotFoundError:
            return None
        c = msgspec.json.decode(raw, type=_CursorFile)
        return Cursor(c.segment, c.offset)

    def _create_segment(self, seg_id: int) -> int:
        path = self._directory / segment_name(seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        _fsync_dir(self._directory)
        return fd

    # --- appending ------------------------------------------------------------------------

    async def append(self, record: UsageRecord) -> None:
        """Return once `record` is on disk (written and fdatasync'ed)."""
        await self._enqueue(encode_frame(record), 1)

    async def append_many(self, records: Iterable[UsageRecord]) -> None:
        """Return once all of `records` are on disk; they land contiguously, in order."""
        frames = [encode_frame(r) for r in records]
        if frames:
            await self._enqueue(b"".join(frames), len(frames))

    async def _enqueue(self, data: bytes, count: int) -> None:
        self._check_open()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(data, count, fut))
        self._wakeup.set()
        # Shielded: a cancelled request still has its record written, and the writer must
        # not be disturbed; only the caller stops waiting.
        await asyncio.shield(fut)

    def _check_open(self) -> None:
        # A failed log (`_failed`) still takes appends: the writer first tries to recover it.
        if not self._opened:
            raise UsageLogError("usage log not opened: use `await UsageLog.open(directory)`")
        if self._closed:
            raise UsageLogError(f"usage log {self._directory} is closed")
        if self._writer is not None and self._writer.done():
            # Without this an append would wait forever on a future nobody resolves.
            raise UsageLogError(f"usage log {self._directory}: writer task has stopped")

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, self._queue = self._queue, []
            data = b"".join(p.data for p in batch)
            count = sum(p.count for p in batch)
            try:
                sealed = await asyncio.to_thread(self._write_sync, data)
            except BaseException as exc:  # every waiter must hear about it
                self._note_sealed()
                self._write_error = exc
                log.error("usage log %s: write failed: %r", self._directory, exc)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(UsageLogError(f"usage log write failed: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise
                continue
            self._note_sealed()
            if self._write_error is not None:
                log.warning("usage log %s: writing again", self._directory)
            self._write_error = None
            if sealed is not None:
                self._sealed_sizes[sealed[0]] = sealed[1]
            self._appended += count
            self._durable = Cursor(self._seg_id, self._seg_size, self._appended)
            now = time.monotonic()
            if not self._age_buckets or now - self._age_buckets[-1][1] >= _AGE_GRANULARITY_S:
                self._age_buckets.append((self._appended - count, now))
            for p in batch:
                if not p.future.done():
                    p.future.set_result(None)

    def _write_sync(self, data: bytes) -> tuple[int, int] | None:
        """Runs in a worker thread; the only code that touches the active segment. Returns the
        (id, size) of a segment it sealed to make room, if any."""
        if self._failed is not None:
            self._reopen_after_failure()
        sealed = None
        if self._seg_size >= self._segment_bytes:
            sealed = (self._seg_id, self._seg_size)
            self._rotate()
        start = self._seg_size
        try:
            _write_all(self._seg_fd, data)
        except OSError as exc:
            # Cut the partial batch off again so later frames are not stranded behind garbage
            # (recovery stops at the first bad frame). If even that fails, the segment is
            # treated like one whose fsync failed: the next write recovers it first.
            try:
                os.ftruncate(self._seg_fd, start)
            except OSError as trunc_exc:
                self._failed = trunc_exc
            raise exc
        try:
            os.fdatasync(self._seg_fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages and a retry
            # would "succeed" without them; nothing written since can be trusted.
            self._failed = exc
            raise
        self._seg_size = start + len(data)
        return sealed

    def _reopen_after_failure(self) -> None:
        """Runs in the writer thread. After a failed fsync (or segment creation): cut the
        active segment back to its last acknowledged byte, make that durable, seal it and go
        on in a new segment. Raises (and stays failed) if the disk still refuses."""
        if self._seg_fd >= 0:
            os.ftruncate(self._seg_fd, self._seg_size)
            os.fdatasync(self._seg_fd)
            os.close(self._seg_fd)
            self._seg_fd = -1
            self._sealed_in_thread.append((self._seg_id, self._seg_size))
            self._seg_id += 1
            self._seg_size = 0
        self._seg_fd = self._create_segment(self._seg_id)
        log.warning("usage log %s: recovered from %r", self._directory, self._failed)
        self._failed = None

    def _note_sealed(self) -> None:
        while self._sealed_in_thread:
            seg, size = self._sealed_in_thread.pop(0)
            self._sealed_sizes[seg] = size

    def _rotate(self) -> None:
        # The segment being sealed was fsynced by the write that filled it.
        os.close(self._seg_fd)
        self._seg_fd = -1
        self._seg_id += 1
        self._seg_size = 0
        try:
            self._seg_fd = self._create_segment(self._seg_id)
        except OSError as exc:
            self._failed = exc
            raise

    # --- shipping -------------------------------------------------------------------------

    async def read_unshipped(self, max_records: int) -> tuple[list[UsageRecord], Cursor]:
        """The oldest unshipped records (at most `max_records`) and the cursor just past them.

        Only acknowledged (fsynced) records are returned. Reading does not move anything:
        pass the cursor to `mark_shipped` once the records are safely stored elsewhere.
        """
        self._check_open()
        start, end = self._shipped, self._durable
        if start.ordinal >= end.ordinal:
            # Nothing in between, only emptied segments: jumping to the end lets the caller's
            # mark_shipped delete them.
            return [], end
        if max_records <= 0:
            return [], start
        sizes = dict(self._sealed_sizes)
        return await asyncio.to_thread(self._read_sync, start, end, sizes, max_records)

    def _read_sync(
        self, start: Cursor, end: Cursor, sealed_sizes: dict[int, int], max_records: int
    ) -> tuple[list[UsageRecord], Cursor]:
        records: list[UsageRecord] = []
        seg, offset = start.segment, start.offset
        while len(records) < max_records and (seg, offset) < (end.segment, end.offset):
            seg_end = end.offset if seg == end.segment else sealed_sizes.get(seg)
            if seg_end is None or offset >= seg_end:
                seg, offset = seg + 1, 0
                continue
            path = self._directory / segment_name(seg)
            with path.open("rb") as f:
                f.seek(offset)
                while len(records) < max_records and offset < seg_end:
                    want = min(seg_end - offset, max(_READ_CHUNK, HEADER_SIZE + MAX_PAYLOAD))
                    buf = f.read(want)
                    got, used = decode_frames(buf, limit=max_records - len(records))
                    if used == 0:
                        raise UsageLogCorrupt(f"{path}: invalid frame at byte {offset}")
                    records.extend(got)
                    offset += used
                    f.seek(offset)
            if offset >= seg_end and seg != end.segment:
                seg, offset = seg + 1, 0
        return records, Cursor(seg, offset, start.ordinal + len(records))

    async def mark_shipped(self, cursor: Cursor) -> None:
        """Record that everything before `cursor` is stored; durable when this returns.

        Idempotent and monotonic: a cursor at or behind the current one changes nothing, so
        two shippers racing over the same records cannot move it backwards.
        """
        self._check_open()
        async with self._ship_lock:
            if cursor <= self._shipped:
                return
            if cursor > self._durable:
                raise ValueError(f"{cursor} is past the durable end of the log {self._durable}")
            done = sorted(s for s in self._sealed_sizes if s < cursor.segment)
            await asyncio.to_thread(self._mark_shipped_sync, cursor, done)
            for seg in done:
                del self._sealed_sizes[seg]
            self._shipped = cursor
            while len(self._age_buckets) > 1 and self._age_buckets[1][0] <= cursor.ordinal:
                self._age_buckets.popleft()
            if self._age_buckets and cursor.ordinal >= self._appended:
                self._age_buckets.clear()

    def _mark_shipped_sync(self, cursor: Cursor, done_segments: Sequence[int]) -> None:
        tmp = self._directory / f"{CURSOR_NAME}.tmp"
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(_CursorFile(cursor.segment, cursor.offset)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._directory / CURSOR_NAME)
        _fsync_dir(self._directory)
        # Whole segments behind the cursor are done; the cursor file is durable first, so a
        # crash here only leaves files that the next open deletes.
        for seg in done_segments:
            with contextlib.suppress(FileNotFoundError):
                (self._directory / segment_name(seg)).unlink()

    # --- health ---------------------------------------------------------------------------

    def health(self) -> str | None:
        """None while the log takes records, else why it may not (a sentence for operators).
        Cheap: the disk's free space is read at most every 0.25 s."""
        now = time.monotonic()
        if now - self._free_checked >= _FREE_CHECK_S:
            self._free_checked = now
            try:
                st = os.statvfs(self._directory)
                self._free_bytes = st.f_bavail * st.f_frsize
            except OSError:
                self._free_bytes = 0
        if self._closed:
            return "the usage log is closed"
        if self._free_bytes is not None and self._free_bytes < self._min_free_bytes:
            return (
                f"the usage log's disk has {self._free_bytes >> 20} MiB free, below the "
                f"{self._min_free_bytes >> 20} MiB it keeps for records in flight"
            )
        failure = self._failed or self._write_error
        if failure is not None:
            self._maybe_probe(now)
            return f"the usage log's last write failed ({type(failure).__name__}: {failure})"
        return None

    @property
    def healthy(self) -> bool:
        return self.health() is None

    def _maybe_probe(self, now: float) -> None:
        # Nothing is admitted while unhealthy, so nothing would ever write again: an empty
        # group commit (recovering the segment first if needed) tells whether the disk works.
        if self._probe is not None and not self._probe.done():
            return
        if now - self._probed < _PROBE_EVERY_S or self._writer is None:
            return
        self._probed = now
        self._probe = asyncio.get_running_loop().create_task(self._run_probe())

    async def _run_probe(self) -> None:
        with contextlib.suppress(UsageLogError):
            await self._enqueue(b"", 0)

    # --- introspection --------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def pending_records(self) -> int:
        """Acknowledged records not yet marked shipped."""
        return self._appended - self._shipped.ordinal

    @property
    def records_appended(self) -> int:
        """Acknowledged records since open, counting unshipped ones recovered at open."""
        return self._appended

    @property
    def records_shipped(self) -> int:
        """Records marked shipped since open (on the same scale as `records_appended`)."""
        return self._shipped.ordinal

    @property
    def oldest_unshipped_age_s(self) -> float:
        """Seconds since the oldest unshipped record was appended (to about a second); 0 when
        nothing is pending."""
        if self.pending_records <= 0 or not self._age_buckets:
            return 0.0
        return max(0.0, time.monotonic() - self._age_buckets[0][1])

    @property
    def shipped_cursor(self) -> Cursor:
        return self._shipped

    @property
    def segment_ids(self) -> Sequence[int]:
        return sorted([*self._sealed_sizes, self._seg_id])

    # --- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Write what is queued, then release the directory."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._probe is not None:
            self._probe.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
            self._seg_fd = -1
        self._release_lock()

    async def __aenter__(self) -> UsageLog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
