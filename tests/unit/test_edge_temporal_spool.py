"""The spool with chains of version 3 frames (`edge.spool`): whole chains trimmed, never a
chain's middle; the dropped ranges it keeps for the heartbeat (`shared.health` ``dropped``);
version 3 frames replayed flagged historical."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sparsetel.edge.delivery import Delivery
from sparsetel.edge.spool import MAX_DROPPED_RANGES, Spool, SpoolLimits, as_historical
from sparsetel.shared.chainframe import (
    FLAG_CHAINED,
    ChainHead,
    chain_frame,
    decode_chain_frame,
    encode_chain_frame,
)
from sparsetel.shared.errors import WireError
from sparsetel.shared.health import MAX_DROPPED, beat_payload, parse_beat
from sparsetel.shared.wire import FLAG_HISTORICAL

REF = b"12345678"
T0 = 1_700_000_000_000


def v3(seq: int, starts: bool, bd_seq: int = 3, audit: bool = False) -> bytes:
    """Frame `seq` of a 1 Hz chain, two measurements each: a chain start or a link."""
    times = [T0 + 2000 * seq, T0 + 2000 * seq + 1000]
    head = ChainHead(REF, times[0], 1000, 4, 128) if starts else None
    audits = [(1.0, 2.0), None] if audit else None
    frame = chain_frame(
        bd_seq, seq, times, 1000, (0,) if starts else (), bytes([seq % 256]) * 20, head,
        None if starts else times[0] - 1000, audit=audits,
    )  # fmt: skip
    return encode_chain_frame(frame)


HEAD, LINK = len(v3(0, True)), len(v3(1, False))  # bytes of a chain's first frame, of a link


def put_chains(spool: Spool, n: int, interval: int, bd_seq: int = 3) -> list[int]:
    """Frames seq 0..n-1, a chain starting every `interval` frames; their ids."""
    return [
        spool.put(bd_seq, s, v3(s, s % interval == 0, bd_seq), starts=s % interval == 0)
        for s in range(n)
    ]


def seqs(spool: Spool) -> list[int]:
    return [f.seq for f in spool.pending()]


def test_a_full_spool_drops_whole_chains_never_a_chains_middle(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_bytes=3 * HEAD + 7 * LINK + 10))
    put_chains(spool, 10, interval=4)  # chains at 0, 4, 8
    assert seqs(spool) == list(range(10))
    spool.put(3, 10, v3(10, False), starts=False)  # one frame too many: 0..3 go, not just 0
    assert seqs(spool) == list(range(4, 11))
    assert spool.stats.dropped_full == 4
    assert spool.dropped_ranges() == [(3, 0, 3)]
    assert not spool.take_cut()  # the open chain (8..10) is whole


def test_a_chain_whose_start_was_acknowledged_is_trimmed_up_to_the_next_start(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_bytes=2 * HEAD + 8 * LINK - 10))
    ids = put_chains(spool, 8, interval=5)  # chains at 0 and 5
    spool.ack(ids[:2])  # the broker has 0 and 1
    spool.put(3, 8, v3(8, False), starts=False)
    spool.put(3, 9, v3(9, False), starts=False)
    spool.put(3, 10, v3(10, True), starts=True)
    spool.put(3, 11, v3(11, False), starts=False)  # over: 2..4 (the rest of chain 0) go
    assert seqs(spool) == list(range(5, 12))
    assert spool.dropped_ranges() == [(3, 2, 4)]


def test_a_drop_that_reaches_the_newest_frame_cuts_the_open_chain(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_bytes=HEAD + 2 * LINK + 10))
    put_chains(spool, 3, interval=100)
    assert not spool.take_cut()
    spool.put(3, 3, v3(3, False), starts=False)  # no chain starts after the oldest
    assert spool.depth == 0 and spool.take_cut() and not spool.take_cut()
    assert spool.dropped_ranges() == [(3, 0, 3)]


def test_frames_past_their_age_go_with_the_rest_of_their_chain(tmp_path: Path) -> None:
    now = [1_000_000.0]
    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_age_s=60), clock=lambda: now[0])
    spool.put(3, 0, v3(0, True), starts=True)
    now[0] += 30
    spool.put(3, 1, v3(1, False), starts=False)
    spool.put(3, 2, v3(2, True), starts=True)
    now[0] += 45  # frame 0 is 75 s old, frame 1 only 45 s: it goes with its chain
    spool.put(3, 3, v3(3, False), starts=False)
    assert seqs(spool) == [2, 3] and spool.stats.dropped_age == 2


def test_dropped_ranges_join_runs_split_by_bdseq_and_keep_the_most_recent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, SpoolLimits(max_bytes=2 * HEAD))
    for s in range(4):  # each put past two frames drops the oldest: one range, joined
        spool.put(3, s, v3(s, True), starts=True)
    assert spool.dropped_ranges() == [(3, 0, 1)]
    spool.put(4, 0, v3(0, True, bd_seq=4), starts=True)
    spool.put(4, 1, v3(1, True, bd_seq=4), starts=True)
    assert spool.dropped_ranges() == [(3, 0, 3)]
    spool.close()
    spool = Spool(path, SpoolLimits(max_bytes=2 * HEAD))  # kept across restarts
    assert spool.dropped_ranges() == [(3, 0, 3)]
    for s in range(2, 2 + 2 * (MAX_DROPPED_RANGES + 5), 2):  # gaps: a range each
        spool.put(4, s, v3(s, True, bd_seq=4), starts=True)
    ranges = spool.dropped_ranges()
    assert len(ranges) == MAX_DROPPED_RANGES
    assert ranges[-1][0] == 4 and ranges[0] != (3, 0, 3)
    assert all(first <= last for _, first, last in ranges)


def test_a_spool_written_before_chains_takes_every_old_frame_as_a_chain_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE frames (id INTEGER PRIMARY KEY AUTOINCREMENT, bd_seq INTEGER NOT NULL,"
            " seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, payload BLOB NOT NULL,"
            " sent_ms INTEGER, tries INTEGER NOT NULL DEFAULT 0);"
        )
        for s in range(3):
            db.execute(
                "INSERT INTO frames (bd_seq, seq, created_ms, payload) VALUES (3, ?, ?, ?)",
                (s, int(time.time() * 1000), v3(s, True)),
            )
    spool = Spool(path, SpoolLimits(max_bytes=3 * HEAD + 5))
    assert seqs(spool) == [0, 1, 2]
    spool.put(3, 3, v3(3, False), starts=False)
    assert seqs(spool) == [1, 2, 3]  # frame 0 alone: the old rows start chains
    with sqlite3.connect(path) as db:
        starts = [r[0] for r in db.execute("SELECT starts FROM frames ORDER BY id")]
    assert starts == [1, 1, 0]


@pytest.mark.parametrize("starts", [True, False])
def test_a_version_3_frame_replays_flagged_historical_and_nothing_else(starts: bool) -> None:
    data = v3(5, starts, audit=True)
    again = as_historical(data)
    assert again[3] == data[3] | FLAG_HISTORICAL and len(again) == len(data)
    assert again[4:-4] == data[4:-4]  # only the flag and the CRC change
    back = decode_chain_frame(again)
    assert back.historical and replace(back, historical=False) == decode_chain_frame(data)
    assert bool(again[3] & FLAG_CHAINED) != starts
    assert as_historical(again) == again


def test_a_damaged_version_3_frame_is_dropped_and_named_in_the_dropped_ranges(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db")
    good = v3(0, True)
    bad = bytearray(v3(1, False))
    bad[-1] ^= 0xFF
    with pytest.raises(WireError):
        as_historical(bytes(bad))
    spool.put(3, 0, good, starts=True)
    spool.put(3, 1, bytes(bad), starts=False)

    class Publisher:
        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def publish_frame(self, payload: bytes, tag: int) -> bool:
            self.frames.append(payload)
            return True

    delivery = Delivery(spool, Publisher())  # type: ignore[arg-type]
    delivery.replay(threading.Event())
    assert delivery.stats.replayed == 1 and delivery.stats.damaged == 1
    assert spool.dropped_ranges() == [(3, 1, 1)]


# --------------------------------------------------------------------------- heartbeat


def beat(**fields: Any) -> bytes:
    return json.dumps({"edge": "e1", "group": "g1", **fields}).encode()


def test_a_beat_names_the_dropped_ranges_and_they_validate() -> None:
    ranges = [[3, 0, 3], [4, 7, 7], [2**32 - 1, 0, 2**32 - 1]]
    payload = beat_payload({"edge": "e1", "group": "g1", "dropped": ranges})
    assert parse_beat(payload, "g1", "e1")["dropped"] == ranges
    full = [[1, i, i] for i in range(MAX_DROPPED)]
    assert len(beat_payload({"edge": "e1", "group": "g1", "dropped": full})) < 2048
    assert parse_beat(beat(dropped=[]), "g1", "e1")["dropped"] == []


MALFORMED_DROPPED = {
    "not a list": {"a": 1},
    "too many": [[1, i, i] for i in range(MAX_DROPPED + 1)],
    "a pair": [[1, 2]],
    "four numbers": [[1, 2, 3, 4]],
    "an object": [{"bd_seq": 1, "first": 2, "last": 3}],
    "first after last": [[1, 5, 4]],
    "negative": [[1, -1, 4]],
    "over 32 bits": [[1, 0, 2**32]],
    "a float": [[1, 0.0, 4]],
    "a bool": [[1, True, 4]],
    "a string": [[1, "0", 4]],
    "null": [None],
}


@pytest.mark.parametrize("dropped", MALFORMED_DROPPED.values(), ids=MALFORMED_DROPPED.keys())
def test_a_beat_with_bad_dropped_ranges_is_refused_whole(dropped: Any) -> None:
    with pytest.raises(WireError, match="dropped") as exc:
        parse_beat(beat(dropped=dropped, spool_depth=1), "g1", "e1")
    assert exc.value.reason == "health_invalid"
    with pytest.raises(ValueError, match="dropped"):
        beat_payload({"edge": "e1", "group": "g1", "dropped": dropped})
