"""The edge's on-disk spool (`sparsetel.edge.spool`): order, acknowledgement, limits,
historical replay, threads, and frames that survive a SIGKILL."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from sparsetel.edge.delivery import Delivery
from sparsetel.edge.spool import Spool, SpoolError, SpoolLimits, as_historical
from sparsetel.shared.errors import WireError
from sparsetel.shared.wire import FLAG_HISTORICAL, Frame, Record, decode_frame, encode_frame


def frame(seq: int, bd_seq: int = 3, records: int = 5) -> bytes:
    recs = tuple(Record(1000 * (seq * records + i), (i % 4, 9)) for i in range(records))
    return encode_frame(Frame(b"12345678", bd_seq, seq, 4, 128, 1000, recs))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_frames_come_back_in_order_until_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    ids = [spool.put(3, seq, frame(seq)) for seq in range(5)]
    assert ids == sorted(ids) and spool.depth == 5
    assert spool.size_bytes == sum(len(frame(s)) for s in range(5))
    assert spool.ack([ids[1], ids[3]]) == 2
    assert spool.ack([ids[1], 999_999]) == 0  # twice, or never here: ignored
    waiting = spool.pending()
    assert [f.seq for f in waiting] == [0, 2, 4]
    assert waiting[0].payload == frame(0) and waiting[0].bd_seq == 3
    assert [f.seq for f in spool.pending(after=ids[0], limit=1)] == [2]
    got = spool.get(ids[2])
    assert got is not None and (got.id, got.seq, got.payload) == (ids[2], 2, frame(2))
    assert spool.get(ids[1]) is None  # acknowledged
    assert spool.depth == 3 and spool.stats.stored == 5 and spool.stats.acked == 2


def test_the_spool_is_in_wal_mode_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spool.db"
    spool = Spool(path)
    ids = [spool.put(7, seq, frame(seq, bd_seq=7)) for seq in range(3)]
    spool.ack(ids[:1])
    spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = Spool(path)
    assert [(f.bd_seq, f.seq) for f in again.pending()] == [(7, 1), (7, 2)]
    assert again.depth == 2 and again.size_bytes == len(frame(1, 7)) + len(frame(2, 7))
    assert again.put(8, 0, frame(0, bd_seq=8)) > ids[-1]  # ids keep growing


def test_a_full_spool_drops_the_oldest_frames_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = len(frame(0))
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_bytes=3 * size))
    with caplog.at_level(logging.WARNING, logger="sparsetel.edge.spool"):
        for seq in range(5):
            spool.put(3, seq, frame(seq))
    assert [f.seq for f in spool.pending()] == [2, 3, 4]
    assert spool.size_bytes <= 3 * size
    assert spool.stats.dropped_full == 2 and spool.stats.dropped_bytes == 2 * size
    messages = [r.getMessage() for r in caplog.records]
    assert any("spool full" in m and "bdSeq 3 seq 0" in m for m in messages)


def test_frames_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_age_s=60), clock=clock)
    spool.put(3, 0, frame(0))
    clock.now += 30
    spool.put(3, 1, frame(1))
    clock.now += 45  # frame 0 is 75 s old now, frame 1 45 s
    spool.put(3, 2, frame(2))
    assert [f.seq for f in spool.pending()] == [1, 2]
    assert spool.stats.dropped_age == 1 and spool.stats.dropped_full == 0


def test_bad_limits_and_oversized_frames_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        SpoolLimits(max_bytes=0)
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_bytes=10))
    with pytest.raises(SpoolError, match="more than the spool's max_bytes"):
        spool.put(3, 0, frame(0))
    assert spool.depth == 0


def test_a_spool_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(path)


def test_historical_flag_changes_nothing_else() -> None:
    live = frame(4)
    old = as_historical(live)
    a, b = decode_frame(live), decode_frame(old)
    assert not a.historical and b.historical
    assert (a.bd_seq, a.seq, a.records, a.model_ref) == (b.bd_seq, b.seq, b.records, b.model_ref)
    assert as_historical(old) == old


def test_historical_flag_keeps_a_version_1_frame_version_1() -> None:
    v1 = encode_frame(replace(decode_frame(frame(4)), version=1))
    old = decode_frame(as_historical(v1))
    assert old.version == 1 and old.historical
    assert as_historical(v1) == v1[:3] + bytes([v1[3] | FLAG_HISTORICAL]) + v1[4:]


class _Publisher:
    """What Delivery needs of a Publisher: room always, and a record of what went out."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def publish_frame(self, payload: bytes, tag: int | None = None) -> bool:
        self.sent.append(payload)
        return True

    def has_room(self) -> bool:
        return True


def test_a_frame_damaged_in_the_spool_is_dropped_and_counted_not_resent_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = bytearray(frame(4))
    damaged[17] ^= 0x04  # a bit of seq, flipped on disk: the CRC no longer matches
    with pytest.raises(WireError, match="crc"):
        as_historical(bytes(damaged))
    spool = Spool(tmp_path / "spool.db")
    for seq, payload in enumerate([frame(3), bytes(damaged), frame(5)]):
        spool.put(3, seq, payload)
    publisher = _Publisher()
    delivery = Delivery(spool, publisher, confirm_wait_s=30.0)  # type: ignore[arg-type]
    delivery.replay(threading.Event())  # (it raised here before: the agent could not start)
    assert [decode_frame(p).seq for p in publisher.sent] == [3, 5]
    assert delivery.stats.damaged == 1 and delivery.stats.replayed == 2
    assert spool.depth == 2  # the damaged one is gone; the others wait for their receipts
    assert "damaged" in caplog.text


def test_acknowledgements_from_another_thread(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    ids = [spool.put(3, seq, frame(seq)) for seq in range(200)]
    acker = threading.Thread(target=lambda: [spool.ack([i]) for i in ids[::2]])
    acker.start()
    more = [spool.put(3, seq, frame(seq)) for seq in range(200, 300)]
    acker.join()
    assert spool.depth == 100 + 100
    assert [f.id for f in spool.pending()] == ids[1::2] + more


def test_stored_frames_survive_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    script = f"""
import os, signal
from pathlib import Path
from sparsetel.edge.spool import Spool
from sparsetel.shared.wire import Frame, Record, encode_frame
spool = Spool(Path({str(path)!r}))
for seq in range(50):
    recs = tuple(Record(1000 * i, (1, 2)) for i in range(5))
    spool.put(5, seq, encode_frame(Frame(b"12345678", 5, seq, 4, 128, 1000, recs)))
    if seq == 9:
        spool.ack([1, 2, 3])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    spool = Spool(path)
    assert [f.seq for f in spool.pending()] == list(range(3, 50))
    assert spool.depth == 47


def test_a_cursor_is_stored_with_its_frame_and_survives_a_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    assert spool.cursor("csv:a") is None
    spool.put(0, 0, b"f0", ("csv:a", 50, 1000))
    spool.put(0, 1, b"f1", ("csv:a", 100, 2000))
    spool.put(0, 2, b"f2")  # a frame without a position leaves the cursor alone
    spool.close()
    spool = Spool(tmp_path / "s.db")
    assert spool.cursor("csv:a") == (100, 2000) and spool.cursor("csv:b") is None
    spool.clear_cursor("csv:a")
    assert spool.cursor("csv:a") is None and spool.depth == 3


def test_confirming_by_the_store_keeps_a_frame_past_its_puback(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool.db", clock=clock)
    ids = [spool.put(3, seq, frame(seq)) for seq in range(6)]
    spool.sent(ids)  # the broker took them all
    assert spool.depth == 6 and spool.overdue(30.0, 100) == []
    assert spool.confirm(3, [(0, 1), (4, 4)]) == 3
    assert spool.confirm(3, [(0, 1)]) == 0  # a receipt that came twice
    assert spool.confirm(4, [(2, 3)]) == 0  # another bdSeq
    assert [f.seq for f in spool.pending()] == [2, 3, 5]
    assert spool.size_bytes == sum(len(frame(s)) for s in (2, 3, 5))
    assert spool.stats.confirmed == 3


def test_frames_without_receipt_are_handed_out_again_less_and_less_often(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool.db", clock=clock)
    a, b = spool.put(3, 0, frame(0)), spool.put(3, 1, frame(1))
    unsent = spool.put(3, 2, frame(2))  # never acknowledged by the broker: not overdue
    spool.sent([a, b])
    clock.now += 29.9
    assert spool.overdue(30.0, 10) == []
    clock.now += 0.2
    assert [f.id for f in spool.overdue(30.0, 1)] == [a]  # at most `limit`, oldest first
    assert [f.id for f in spool.overdue(30.0, 10)] == [b]
    clock.now += 59.0  # the second try waits twice as long
    assert spool.overdue(30.0, 10) == []
    clock.now += 2.0
    assert [f.id for f in spool.overdue(30.0, 10)] == [a, b]
    for _ in range(10):  # the wait stops growing at 2**6 times
        clock.now += 64 * 30.0
        assert [f.id for f in spool.overdue(30.0, 10)] == [a, b]  # never `unsent`
    assert unsent in {f.id for f in spool.pending()} and spool.depth == 3


def test_a_spool_written_by_an_older_agent_gains_the_receipt_columns(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE frames (id INTEGER PRIMARY KEY AUTOINCREMENT, bd_seq INTEGER NOT NULL,"
            " seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, payload BLOB NOT NULL);"
        )
        db.execute(
            "INSERT INTO frames (bd_seq, seq, created_ms, payload) VALUES (3, 0, 1, ?)", (frame(0),)
        )
    spool = Spool(path)
    assert [f.seq for f in spool.pending()] == [0]
    spool.sent([spool.pending()[0].id])
    assert spool.confirm(3, [(0, 0)]) == 1 and spool.depth == 0
