"""The local usage log: durability before acknowledgement, group commit, crash recovery."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support.usage_events import usage_event

from metering.usage import log as usage_log
from metering.usage.log import (
    CURSOR_NAME,
    HEADER_SIZE,
    UsageLog,
    UsageLogCorrupt,
    UsageLogError,
    UsageLogLocked,
    decode_frames,
    encode_frame,
    segment_name,
)
from metering.usage.record import UsageRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def make_record(i: int, prefix: str = "req") -> UsageRecord:
    return usage_event(
        f"{prefix}-{i:08d}",
        account_id=1 + i % 7,
        key_id=10 + i % 3,
        endpoint="chat.completions" if i % 2 else "completions",
        model="tiny-base" if i % 3 else "tiny-base:lora-a",
        base_model="tiny-base",
        adapter=None if i % 3 else "lora-a",
        status="ok" if i % 5 else "error",
        http_status=200 if i % 5 else 500,
        prompt_tokens=i % 1000,
        completion_tokens=(i * 7) % 500,
        started_at=T0 + dt.timedelta(milliseconds=i),
        total_ms=12.5 + i,
        ttft_ms=None if i % 4 == 0 else 3.25,
        output_sha256=None if i % 5 == 0 else f"{i:064x}",
        error_type="EngineError" if i % 5 == 0 else None,
        engine=f"engine-{i % 2}",
    )


async def read_all(log: UsageLog) -> list[UsageRecord]:
    """Everything unshipped, without shipping it."""
    records, _ = await log.read_unshipped(10**9)
    return records


async def drain(log: UsageLog, batch: int) -> list[UsageRecord]:
    """Read and mark shipped until empty, like a shipper with an always-up store."""
    out: list[UsageRecord] = []
    while True:
        records, cursor = await log.read_unshipped(batch)
        await log.mark_shipped(cursor)
        if not records:
            return out
        out.extend(records)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def last_nonempty_segment(directory: Path) -> Path:
    return [p for p in segments(directory) if p.stat().st_size > 0][-1]


async def test_round_trip(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(50)]
    async with await UsageLog.open(tmp_path) as log:
        for r in records[:10]:
            await log.append(r)
        await log.append_many(records[10:])
        assert log.pending_records == 50
        got = await read_all(log)
    assert got == records
    async with await UsageLog.open(tmp_path) as log:
        assert log.pending_records == 50
        assert await read_all(log) == records


async def test_read_does_not_ship_and_cursor_survives_reopen(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(30)]
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(records)
        first, cursor = await log.read_unshipped(12)
        assert first == records[:12]
        again, _ = await log.read_unshipped(12)
        assert again == first, "reading must not move the cursor"
        await log.mark_shipped(cursor)
        assert log.pending_records == 18
    assert (tmp_path / CURSOR_NAME).exists()
    async with await UsageLog.open(tmp_path) as log:
        assert log.pending_records == 18
        assert await drain(log, 5) == records[12:]
        assert log.pending_records == 0


async def test_mark_shipped_never_moves_backwards(tmp_path: Path) -> None:
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(10))
        _, c3 = await log.read_unshipped(3)
        _, c7 = await log.read_unshipped(7)
        await log.mark_shipped(c7)
        await log.mark_shipped(c3)  # a slower shipper finishing late
        assert log.shipped_cursor == c7
        assert log.pending_records == 3
        rest, _ = await log.read_unshipped(100)
        assert [r.request_id for r in rest] == [make_record(i).request_id for i in range(7, 10)]


async def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.002)  # a realistic disk, so appends pile up behind each fsync
        real(fd)

    monkeypatch.setattr(usage_log.os, "fdatasync", counting_fdatasync)
    async with await UsageLog.open(tmp_path) as log:
        await asyncio.gather(*(log.append(make_record(i)) for i in range(100)))
        assert calls <= 5, f"100 concurrent appends took {calls} fsyncs"
        # Staggered arrivals: appends that come in while an fsync runs join the next one.
        calls = 0

        async def late(i: int) -> None:
            await asyncio.sleep((i % 10) * 0.001)
            await log.append(make_record(1000 + i))

        await asyncio.gather(*(late(i) for i in range(100)))
        assert calls < 30, f"100 staggered appends took {calls} fsyncs"
        assert len(await read_all(log)) == 200


async def test_append_returns_only_after_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    real = os.fdatasync

    def blocking_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    log = await UsageLog.open(tmp_path)
    try:
        monkeypatch.setattr(usage_log.os, "fdatasync", blocking_fdatasync)
        task = asyncio.create_task(log.append(make_record(1)))
        assert await asyncio.to_thread(entered.wait, 5)
        await asyncio.sleep(0.05)
        assert not task.done(), "append returned before its fsync did"
        assert log.pending_records == 0, "an unsynced record must not be visible to shipping"
        release.set()
        await asyncio.wait_for(task, 5)
        assert log.pending_records == 1
    finally:
        release.set()
        await log.close()


async def test_cancelled_append_is_still_written(tmp_path: Path) -> None:
    async with await UsageLog.open(tmp_path) as log:
        task = asyncio.create_task(log.append(make_record(1)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await log.append(make_record(2))
        assert [r.request_id for r in await read_all(log)] == ["req-00000001", "req-00000002"]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x07", id="one-byte"),
        pytest.param(b"\xff" * (HEADER_SIZE - 1), id="partial-header"),
        pytest.param(encode_frame(make_record(999))[:-5], id="partial-payload"),
        pytest.param(b"\x00" * 4096, id="zero-filled"),
        pytest.param(b"\xff\xff\xff\x7f" + b"\x00" * 40, id="absurd-length"),
    ],
)
async def test_torn_tail_is_truncated(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    records = [make_record(i) for i in range(20)]
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(records)
    seg = last_nonempty_segment(tmp_path)
    good_size = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(tail)

    with caplog.at_level(logging.WARNING, logger="metering.usage.log"):
        log = await UsageLog.open(tmp_path)
    try:
        assert "torn" in caplog.text
        assert seg.stat().st_size == good_size
        assert await read_all(log) == records
        await log.append(make_record(20))
    finally:
        await log.close()
    async with await UsageLog.open(tmp_path) as log:
        assert await read_all(log) == [*records, make_record(20)]


async def test_bad_crc_in_last_frame_drops_only_that_frame(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(5)]
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(records)
    seg = last_nonempty_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x40
    seg.write_bytes(bytes(data))
    async with await UsageLog.open(tmp_path) as log:
        assert await read_all(log) == records[:4]
        assert (seg.parent / f"{seg.name}.torn").exists(), "dropped bytes are kept aside"


async def test_every_cut_point_recovers_exactly_the_complete_frames(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(3)]
    frames = [encode_frame(r) for r in records]
    whole = b"".join(frames)
    boundaries = [sum(len(f) for f in frames[:k]) for k in range(len(frames) + 1)]
    for cut in range(boundaries[1] - 1, len(whole) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes(whole[:cut])
        expected = sum(1 for b in boundaries[1:] if b <= cut)
        async with await UsageLog.open(d) as log:
            assert await read_all(log) == records[:expected], f"cut at byte {cut}"


async def test_corruption_in_a_sealed_segment_is_not_silently_dropped(tmp_path: Path) -> None:
    async with await UsageLog.open(tmp_path, segment_bytes=1000) as log:
        for i in range(0, 40, 4):
            await log.append_many(make_record(j) for j in range(i, i + 4))
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + 10] ^= 0x01
    first.write_bytes(bytes(data))
    # Only the newest segment can hold a torn write; damage elsewhere lost acknowledged
    # records, which calls for an operator, not a silent truncation.
    with pytest.raises(UsageLogCorrupt, match=first.name):
        await UsageLog.open(tmp_path)


def test_decode_frames_stops_at_first_bad_frame() -> None:
    a, b = encode_frame(make_record(1)), encode_frame(make_record(2))
    bad = bytearray(b)
    bad[HEADER_SIZE + 2] ^= 1
    records, used = decode_frames(a + bytes(bad) + a)
    assert [r.request_id for r in records] == ["req-00000001"]
    assert used == len(a)


async def test_segments_rotate_and_shipped_ones_are_deleted(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(200)]
    async with await UsageLog.open(tmp_path, segment_bytes=2000) as log:
        for i in range(0, 200, 5):
            await log.append_many(records[i : i + 5])
        assert len(segments(tmp_path)) >= 10
        shipped: list[UsageRecord] = []
        while True:
            got, cursor = await log.read_unshipped(17)  # batches straddle segment ends
            await log.mark_shipped(cursor)
            if not got:
                break
            shipped.extend(got)
            remaining = [int(p.stem) for p in segments(tmp_path)]
            assert min(remaining) == cursor.segment, "segments behind the cursor are deleted"
        assert shipped == records
        assert len(segments(tmp_path)) == 1
        assert log.pending_records == 0
        await log.append(make_record(500))
        assert await read_all(log) == [make_record(500)]


async def test_restarts_leave_no_unbounded_segments(tmp_path: Path) -> None:
    for i in range(5):
        async with await UsageLog.open(tmp_path) as log:
            await log.append(make_record(i))
            await drain(log, 100)
    assert len(segments(tmp_path)) <= 2


async def test_pending_count_after_reopen_with_cursor_mid_segment(tmp_path: Path) -> None:
    async with await UsageLog.open(tmp_path, segment_bytes=1500) as log:
        for i in range(0, 40, 4):
            await log.append_many(make_record(j) for j in range(i, i + 4))
        _, cursor = await log.read_unshipped(13)
        await log.mark_shipped(cursor)
    async with await UsageLog.open(tmp_path, segment_bytes=1500) as log:
        assert log.pending_records == 27
        assert [r.request_id for r in await drain(log, 6)] == [
            make_record(i).request_id for i in range(13, 40)
        ]


async def test_pending_and_age_introspection(tmp_path: Path) -> None:
    async with await UsageLog.open(tmp_path) as log:
        assert log.pending_records == 0
        assert log.oldest_unshipped_age_s == 0.0
        await log.append(make_record(1))
        await asyncio.sleep(0.05)
        assert log.pending_records == 1
        assert log.oldest_unshipped_age_s >= 0.04
        await drain(log, 10)
        assert log.pending_records == 0
        assert log.oldest_unshipped_age_s == 0.0


async def test_recovered_records_report_their_age(tmp_path: Path) -> None:
    old = make_record(1)  # started_at in T0, well in the past
    async with await UsageLog.open(tmp_path) as log:
        await log.append(old)
    async with await UsageLog.open(tmp_path) as log:
        expected = (dt.datetime.now(dt.UTC) - old.started_at).total_seconds()
        assert log.oldest_unshipped_age_s == pytest.approx(expected, abs=5)


async def test_second_opener_is_refused(tmp_path: Path) -> None:
    log = await UsageLog.open(tmp_path)
    try:
        with pytest.raises(UsageLogLocked, match="already open"):
            await UsageLog.open(tmp_path)
    finally:
        await log.close()
    async with await UsageLog.open(tmp_path):
        pass


async def test_second_process_is_refused(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import asyncio
        from metering.usage.log import UsageLog, UsageLogLocked
        async def main():
            try:
                await UsageLog.open({str(tmp_path)!r})
            except UsageLogLocked as e:
                print("LOCKED", e)
        asyncio.run(main())
        """
    )
    async with await UsageLog.open(tmp_path):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    assert out.decode().startswith("LOCKED"), out
    assert str(os.getpid()) in out.decode(), "the error names the owner"


async def test_append_after_close_fails(tmp_path: Path) -> None:
    log = await UsageLog.open(tmp_path)
    await log.close()
    with pytest.raises(UsageLogError, match="closed"):
        await log.append(make_record(1))


async def test_failed_fsync_seals_the_segment_and_the_next_write_starts_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    log = await UsageLog.open(tmp_path)
    try:
        await log.append(make_record(1))
        first_segment = log.segment_ids[-1]
        monkeypatch.setattr(usage_log.os, "fdatasync", failing_fdatasync)
        with pytest.raises(UsageLogError):
            await log.append(make_record(2))
        assert log.health() is not None and "I/O error" in log.health()  # type: ignore[operator]
        monkeypatch.undo()
        # The kernel may have dropped the unsynced pages: the segment is cut back to what was
        # acknowledged and sealed, and record 3 goes to a new segment.
        await log.append(make_record(3))
        assert log.health() is None
        assert log.segment_ids[-1] > first_segment
        records, _ = await log.read_unshipped(10)
        assert [r.request_id for r in records] == [make_record(1).request_id,
                                                   make_record(3).request_id]  # fmt: skip
    finally:
        await log.close()
    # The sealed segment holds only acknowledged frames: reopening finds no corruption.
    reopened = await UsageLog.open(tmp_path)
    try:
        records, _ = await reopened.read_unshipped(10)
        assert [r.request_id for r in records] == [make_record(1).request_id,
                                                   make_record(3).request_id]  # fmt: skip
    finally:
        await reopened.close()


async def test_unhealthy_log_probes_itself_back_to_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is admitted while the log is unhealthy, so nothing writes: the log must find
    out by itself that the disk works again."""

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(usage_log, "_PROBE_EVERY_S", 0.05)
    log = await UsageLog.open(tmp_path)
    try:
        monkeypatch.setattr(usage_log.os, "fdatasync", failing_fdatasync)
        with pytest.raises(UsageLogError):
            await log.append(make_record(1))
        assert log.health() is not None
        await asyncio.sleep(0.2)  # probes keep failing while the disk refuses
        assert log.health() is not None
        monkeypatch.undo()
        for _ in range(100):  # polls health() as the gateway does, request by request
            if log.health() is None:
                break
            await asyncio.sleep(0.05)
        assert log.health() is None
        await log.append(make_record(2))
        records, _ = await log.read_unshipped(10)
        assert [r.request_id for r in records] == [make_record(2).request_id]
    finally:
        await log.close()


async def test_low_free_space_makes_the_log_unhealthy(tmp_path: Path) -> None:
    log = await UsageLog.open(tmp_path, min_free_bytes=1 << 62)
    try:
        reason = log.health()
        assert reason is not None and "free" in reason
        await log.append(make_record(1))  # records of requests in flight still go in
    finally:
        await log.close()
    assert (await UsageLog.open(tmp_path, min_free_bytes=0)).health() is None


async def test_short_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    log = await UsageLog.open(tmp_path)
    fail_once = True

    def short_then_enospc(fd: int, data: bytes | memoryview) -> int:
        nonlocal fail_once
        if fd == log._seg_fd and fail_once:
            fail_once = False
            real_write(fd, bytes(data)[:7])  # half a header reaches the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    try:
        await log.append(make_record(1))
        monkeypatch.setattr(usage_log.os, "write", short_then_enospc)
        with pytest.raises(UsageLogError):
            await log.append(make_record(2))
        # Disk space came back: later records must not be stranded behind the partial frame.
        await log.append(make_record(3))
    finally:
        await log.close()
    async with await UsageLog.open(tmp_path) as log:
        assert [r.request_id for r in await read_all(log)] == ["req-00000001", "req-00000003"]


CHILD = """
import asyncio, datetime as dt, sys
from metering.usage.log import UsageLog
from tests.support.usage_events import usage_event

def rec(rid):
    return usage_event(
        rid, account_id=1, started_at=dt.datetime.now(dt.timezone.utc), adapter=None,
        base_model="m", prompt_tokens=3, completion_tokens=5, output_sha256="ab" * 32,
    )

async def main(directory, prefix):
    log = await UsageLog.open(directory, segment_bytes=32768)
    out = sys.stdout

    async def worker(w):
        i = 0
        while True:
            if i % 10 == 9:
                ids = [f"{prefix}-{w}-{i}-{k}" for k in range(3)]
                await log.append_many(rec(r) for r in ids)
            else:
                ids = [f"{prefix}-{w}-{i}"]
                await log.append(rec(ids[0]))
            # Printed only after the append returned: each printed id is acknowledged.
            out.write("".join(r + "\\n" for r in ids))
            out.flush()
            i += 1

    await asyncio.gather(*(worker(w) for w in range(16)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _run_and_kill(script: Path, directory: Path, prefix: str, after_lines: int) -> set[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(directory),
        prefix,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: set[str] = set()
    buf = b""
    try:
        while len(acked) < after_lines:
            chunk = await asyncio.wait_for(proc.stdout.read(65536), 30)
            if not chunk:
                stderr = await proc.stderr.read() if proc.stderr else b""
                pytest.fail(f"child exited early: {stderr.decode()}")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            acked.update(line.decode() for line in lines)
    finally:
        proc.send_signal(signal.SIGKILL)
    rest = await proc.stdout.read()
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    *lines, _partial = (buf + rest).split(b"\n")  # a partial last line was never acknowledged
    acked.update(line.decode() for line in lines)
    return acked


async def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "log"
    acked: set[str] = set()
    for round_ in range(4):
        acked |= await _run_and_kill(script, directory, f"r{round_}", 1500 + 700 * round_)
    async with await UsageLog.open(directory) as log:
        ids = [r.request_id for r in await read_all(log)]
    assert len(ids) == len(set(ids)), "a record was recovered twice"
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    assert len(acked) >= 1500 + 2200 + 2900 + 3600
