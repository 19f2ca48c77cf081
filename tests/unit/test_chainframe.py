"""Version 3 (chained) frames: golden bytes from shared/golden.py and docs/wire-format.md,
round trips, header sizes, every cut and bit flip, a named table of malformed input, and
hostile bytes that may raise nothing but WireError."""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetel.shared.chainframe import (
    MAX_K,
    MIN_FRAME_BYTES,
    ChainFrame,
    ChainHead,
    chain_frame,
    chain_header_bytes,
    decode_chain_frame,
    encode_chain_frame,
    frame_version,
)
from sparsetel.shared.errors import WireError
from sparsetel.shared.golden import GOLDEN_V3
from sparsetel.shared.wire import (
    MAX_FRAME_BYTES,
    MAX_RECORDS,
    Frame,
    Record,
    decode_frame,
    encode_frame,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
REF = bytes.fromhex("0123456789abcdef")
U32, U64 = 2**32 - 1, 2**64 - 1
T0 = 1700000000000
HEAD = ChainHead(REF, T0, 1000, 4, 128)


def seal(body: bytes) -> bytes:
    """A frame: `body` (everything before the CRC) and its CRC-32, big-endian."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def v(*values: int) -> bytes:
    """The unsigned LEB128 varints of `values`, one after the other."""
    out = bytearray()
    for value in values:
        while value >= 0x80:
            out += bytes(((value & 0x7F) | 0x80,))
            value >>= 7
        out += bytes((value,))
    return bytes(out)


def canon(frame: ChainFrame) -> ChainFrame:
    """The frame with NaN audit values made comparable (NaN != NaN in Python)."""
    if frame.audit is None:
        return frame
    audit = tuple(
        None if a is None else tuple(-1e300 if math.isnan(x) else x for x in a) for a in frame.audit
    )
    return replace(frame, audit=audit)


def has_nan(frame: ChainFrame) -> bool:
    return any(a is not None and any(map(math.isnan, a)) for a in frame.audit or ())


# --------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_encode_matches_golden_bytes(name: str) -> None:
    assert encode_chain_frame(GOLDEN_V3[name].frame) == GOLDEN_V3[name].data


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_decode_golden_bytes_gives_the_frame_and_its_times(name: str) -> None:
    golden = GOLDEN_V3[name]
    frame = decode_chain_frame(golden.data)
    assert canon(frame) == canon(golden.frame)
    assert frame.times(golden.period_ms, golden.prev_last_ms) == golden.times_ms


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_chain_frame_builds_the_golden_frame_from_absolute_times(name: str) -> None:
    g = GOLDEN_V3[name]
    f = g.frame
    built = chain_frame(
        f.bd_seq, f.seq, g.times_ms, g.period_ms, f.keys, f.payload, f.head, g.prev_last_ms,
        f.historical, f.audit,
    )  # fmt: skip
    assert encode_chain_frame(built) == g.data


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_spec_document_shows_the_golden_bytes(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- golden:v3_{name} -->\s*```\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/wire-format.md has no golden:v3_{name} block"
    assert bytes.fromhex(match.group(1)) == GOLDEN_V3[name].data


def test_versions_are_told_apart_by_frame_version_and_each_decoder_refuses_the_other() -> None:
    v3 = GOLDEN_V3["historical_audit"].data  # 45 bytes: past a version 1 header's 37
    v2 = encode_frame(Frame(REF, 7, 42, 4, 128, 1000, (Record(T0, ()),)))
    assert (frame_version(v3), frame_version(v2), frame_version(b"ST\x01")) == (3, 2, 1)
    for decode, data in ((decode_frame, v3), (decode_chain_frame, v2)):
        with pytest.raises(WireError) as info:
            decode(data)
        assert info.value.reason == "version"


@pytest.mark.parametrize(("data", "reason"), [(b"ST", "truncated"), (b"XT\x03", "magic")])
def test_frame_version_rejects_what_is_not_a_frame(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        frame_version(data)
    assert info.value.reason == reason


# --------------------------------------------------------------------------- header sizes


def test_chained_header_at_1_hz_is_14_bytes_with_magic_crc_and_payload_length() -> None:
    # magic 2, version 1, flags 1, bd_seq 1, seq 1, gap 1, count 1, no keys 1, payload
    # length 1, CRC 4: everything a record costs besides its payload bytes.
    frame = chain_frame(5, 127, [T0 + 1000], 1000, [], b"\x99" * 20, None, T0)
    assert chain_header_bytes(frame) == MIN_FRAME_BYTES == 14
    assert len(encode_chain_frame(frame)) == 14 + 20


SIZE_CASES = {  # label in the document's table -> (records, the frame)
    "not chained": (1, ChainFrame(7, 42, 1, (0,), bytes(10), HEAD)),
    "not chained, 50 records": (50, ChainFrame(7, 42, 50, (0,), bytes(200), HEAD)),
    "chained": (1, ChainFrame(7, 43, 1, (), bytes(10), None)),
    "chained, 50 records": (50, ChainFrame(7, 43, 50, (), bytes(200), None)),
    "chained, seq 128..16383": (1, ChainFrame(7, 3600, 1, (), bytes(10), None)),
    "chained, key at 0": (1, ChainFrame(7, 43, 1, (0,), bytes(10), None)),
}


def test_header_sizes_match_the_table_in_the_document() -> None:
    text = DOC.read_text(encoding="utf-8").split("<!-- v3-header-sizes -->")[1]
    rows = dict(re.findall(r"^\| ([^|]+?) +\| +\d+ +\| +(\d+) +\|", text, re.MULTILINE))
    sizes = {label: str(chain_header_bytes(frame)) for label, (_, frame) in SIZE_CASES.items()}
    assert {label: rows.get(label) for label in SIZE_CASES} == sizes


# --------------------------------------------------------------------------- round trips


@st.composite
def frames(draw: st.DrawFn, max_records: int = 60) -> ChainFrame:
    """Valid frames: structure drawn by hypothesis, bulk content from a seeded generator."""
    chained, count = draw(st.booleans()), draw(st.integers(1, max_records))
    rng = random.Random(draw(st.integers(0, 2**32)))
    period = draw(st.sampled_from([1, 1000]) | st.integers(1, U32))
    keys = set(rng.sample(range(count), rng.randint(0, min(count, 6))))
    deltas = None
    if count > 1 and draw(st.booleans()):
        low, high = (-(2**63), 2**63 - 1) if chained else (-period, 2**33)
        deltas = [rng.choice([0, 0, low, high, rng.randint(low, high)]) for _ in range(count - 1)]
        deltas[rng.randrange(count - 1)] = 1
    head, gap = None, draw(st.sampled_from([0, -1, 250]) | st.integers(-(2**63), 2**63 - 1))
    if not chained:
        t0 = draw(st.sampled_from([0, T0]) | st.integers(0, 2**48))
        head = ChainHead(draw(st.binary(min_size=8, max_size=8)), t0, period,
                         draw(st.integers(1, 255)), draw(st.integers(1, MAX_K)))  # fmt: skip
        keys, gap = keys | {0}, 0
    audit = None
    if dim := draw(st.sampled_from([0, 1, 3])):
        present = {rng.randrange(count)} | {i for i in range(count) if rng.random() < 0.4}
        values = [0.0, -95.5, math.inf, float("nan"), 12.25]
        audit = tuple(
            tuple(rng.choice(values) for _ in range(dim)) if i in present else None
            for i in range(count)
        )
    return ChainFrame(
        draw(st.integers(0, U32)), draw(st.integers(int(chained), U32)), count,
        tuple(sorted(keys)), draw(st.binary(max_size=300)), head, gap,
        None if deltas is None else tuple(deltas), draw(st.booleans()), audit,
    )  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_decode_inverts_encode_for_any_valid_frame(frame: ChainFrame) -> None:
    data = encode_chain_frame(frame)
    assert canon(decode_chain_frame(data)) == canon(frame)
    assert data[3] == (frame.chained << 3 | (frame.deltas is not None) << 2
                       | (frame.audit is not None) << 1 | frame.historical)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5000), min_size=1, max_size=40),
    st.sampled_from([1, 7, 1000]),
    st.integers(0, 2**45),
    st.booleans(),
)
def test_times_of_a_built_frame_are_the_times_it_was_built_from(
    steps: list[int], period: int, start: int, chained: bool
) -> None:
    times = [start + sum(steps[: i + 1]) for i in range(len(steps))]
    head = None if chained else ChainHead(REF, times[0], period, 4, 128)
    frame = chain_frame(9, 1, times, period, [] if chained else [0], b"", head, start)
    again = decode_chain_frame(encode_chain_frame(frame))
    assert again.times(period, start) == tuple(times)
    assert (again.deltas is None) == all(s == period for s in steps[1:])


def test_largest_frame_round_trips_and_one_byte_more_is_refused() -> None:
    audit = tuple((float(i),) * 12 for i in range(MAX_RECORDS))
    deltas = (2**63 - 1,) * (MAX_RECORDS - 1)
    frame = ChainFrame(U32, U32, MAX_RECORDS, tuple(range(MAX_RECORDS)), b"", None,
                       gap=-(2**63), deltas=deltas, audit=audit)  # fmt: skip
    room = MAX_FRAME_BYTES - len(encode_chain_frame(frame)) - 2  # a 3-byte payload length
    frame = replace(frame, payload=bytes(range(256)) * (room // 256) + bytes(room % 256))
    data = encode_chain_frame(frame)
    assert len(data) == MAX_FRAME_BYTES and decode_chain_frame(data) == frame
    with pytest.raises(WireError) as info:
        encode_chain_frame(replace(frame, payload=frame.payload + b"\x00"))
    assert info.value.reason == "too_large"


def test_chained_times_need_the_chain_and_may_not_go_back() -> None:
    frame = decode_chain_frame(GOLDEN_V3["chained"].data)
    with pytest.raises(ValueError, match="prev_last_ms"):
        frame.times(1000)
    with pytest.raises(WireError) as info:
        replace(frame, gap=-1001).times(1000, T0)
    assert info.value.reason == "time_order"
    assert replace(frame, gap=-1000).times(1000, T0) == (T0,)  # equal times are allowed


# --------------------------------------------------------------------------- hostile input

KEY = GOLDEN_V3["key"].data
AUDITED = GOLDEN_V3["historical_audit"].data
HEAD_BYTES = b"ST\x03\x00" + v(7, 42) + REF + v(T0, 1000) + b"\x04" + v(128)
CHAIN_BYTES = b"ST\x03\x08" + v(7, 43, 0)  # gap 0
TAIL = v(1, 0) + v(2) + b"\xab\xcd"  # one record, no keys, a 2-byte payload
KEY_TAIL = v(1, 1, 0) + v(2) + b"\xab\xcd"  # one record, a key at 0
AUDIT_HEAD = b"ST\x03\x0a" + v(7, 43, 0) + v(2, 0, 0)  # chained, audited, 2 records, no payload
MALFORMED = [
    ("too_large", KEY + bytes(MAX_FRAME_BYTES), "too_large"),
    ("empty", b"", "truncated"),
    ("magic_only", b"ST", "truncated"),
    ("shorter_than_14", seal(b"ST\x03\x08" + v(7, 43, 0, 1, 0)), "truncated"),
    ("bad_magic", b"SX" + KEY[2:], "magic"),
    ("version_2", KEY[:2] + b"\x02" + KEY[3:], "version"),
    ("version_4", seal(b"ST\x04" + KEY[3:-4]), "version"),
    ("crc_bit_flipped", KEY[:-1] + bytes([KEY[-1] ^ 1]), "crc"),
    ("crc_little_endian", KEY[:-4] + KEY[-4:][::-1], "crc"),
    ("byte_after_the_crc", KEY + b"\x00", "crc"),
    ("unknown_flag_0x10", seal(b"ST\x03\x18" + CHAIN_BYTES[4:] + TAIL), "flags"),
    ("unknown_flag_0x80", seal(b"ST\x03\x80" + HEAD_BYTES[4:] + KEY_TAIL), "flags"),
    ("bd_seq_over_u32", seal(b"ST\x03\x08" + v(2**32, 43, 0) + TAIL), "field_range"),
    ("seq_over_u32", seal(b"ST\x03\x08" + v(7, 2**32, 0) + TAIL), "field_range"),
    ("chained_with_seq_0", seal(b"ST\x03\x08" + v(7, 0, 0) + TAIL), "chain_seq"),
    ("model_ref_cut", seal(b"ST\x03\x00" + v(7, 42) + REF[:7]), "truncated"),
    ("period_0", seal(HEAD_BYTES[:14] + v(T0, 0) + b"\x04" + v(128) + KEY_TAIL),
     "period_range"),
    ("period_over_u32", seal(HEAD_BYTES[:14] + v(T0, 2**32) + b"\x04" + v(128) + KEY_TAIL),
     "period_range"),
    ("L_0", seal(HEAD_BYTES[:14] + v(T0, 1000) + b"\x00" + v(128) + KEY_TAIL), "L_range"),
    ("K_0", seal(HEAD_BYTES[:-2] + v(0) + KEY_TAIL), "K_range"),
    ("K_over_2_24", seal(HEAD_BYTES[:-2] + v(2**24 + 1) + KEY_TAIL), "K_range"),
    ("count_0", seal(CHAIN_BYTES + v(0, 0, 0)), "n_records"),
    ("count_4097", seal(CHAIN_BYTES + v(MAX_RECORDS + 1, 0, 0)), "n_records"),
    ("more_keys_than_records", seal(CHAIN_BYTES + v(2, 3, 0, 0, 0, 0)), "key_range"),
    ("key_equal_to_count", seal(CHAIN_BYTES + v(2, 1, 2, 0)), "key_range"),
    ("second_key_past_count", seal(CHAIN_BYTES + v(3, 2, 1, 1, 0)), "key_range"),
    ("key_difference_over_u64", seal(CHAIN_BYTES + v(3, 2, 0, 2**64 - 1, 0)), "key_range"),
    ("not_chained_without_keys", seal(HEAD_BYTES + TAIL), "no_key_start"),
    ("not_chained_first_key_1", seal(HEAD_BYTES + v(2, 1, 1, 0)), "no_key_start"),
    ("varint_not_minimal", seal(b"ST\x03\x08" + b"\x87\x00" + v(43, 0) + TAIL),
     "varint_overlong"),
    ("varint_zero_in_2_bytes", seal(b"ST\x03\x08" + v(7) + b"\x80\x00" + v(0) + TAIL),
     "varint_overlong"),
    ("varint_11_bytes", seal(CHAIN_BYTES[:-1] + b"\x80" * 10 + b"\x01" + TAIL),
     "varint_overflow"),
    ("varint_above_u64", seal(CHAIN_BYTES[:-1] + b"\xff" * 9 + b"\x02" + TAIL),
     "varint_overflow"),
    ("varint_cut", seal(CHAIN_BYTES + v(1, 0) + b"\x81"), "truncated"),
    ("irregular_but_regular", seal(b"ST\x03\x0c" + v(7, 43, 0, 3, 0, 0, 0, 0)),
     "needless_irregular"),
    ("irregular_one_record", seal(b"ST\x03\x0c" + v(7, 43, 0, 1, 0, 0)), "needless_irregular"),
    ("step_back_in_a_key_frame", seal(b"ST\x03\x04" + HEAD_BYTES[4:] + v(2, 1, 0, 2001, 0)),
     "time_order"),
    ("time_past_u64_in_a_key_frame",
     seal(HEAD_BYTES[:14] + v(U64 - 500, 1000) + b"\x04" + v(128) + v(2, 1, 0, 0)),
     "time_range"),
    ("payload_past_the_frame", seal(CHAIN_BYTES + v(1, 0, 3) + b"\xab\xcd"), "payload_length"),
    ("audit_D_0", seal(AUDIT_HEAD + b"\x00\x00\x80"), "audit_dim"),
    ("audit_bitmap_spare_bit", seal(AUDIT_HEAD + b"\x00\x01\x81" + bytes(4)),
     "bitmap_padding"),
    ("audit_flag_without_audit", seal(AUDIT_HEAD + b"\x00\x01\x00"), "audit_empty"),
    ("audit_values_cut", seal(AUDITED[:-5]), "truncated"),
    ("trailing_byte", seal(KEY[:-4] + b"\x00"), "trailing"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_decode_rejects_malformed_frame(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_chain_frame(data)
    assert info.value.reason == reason


def test_every_documented_reject_reason_has_a_malformed_case() -> None:
    text = DOC.read_text(encoding="utf-8").split("### Version 3 reject reasons")[1]
    table = text.split("| tag")[1].split("\n\n")[0]
    documented = set(re.findall(r"^\| `(\w+)`", table, re.MULTILINE))
    assert documented == {m[2] for m in MALFORMED}


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_every_cut_of_a_golden_frame_is_truncated_or_fails_the_crc(name: str) -> None:
    data = GOLDEN_V3[name].data
    for size in range(len(data)):
        with pytest.raises(WireError) as info:
            decode_chain_frame(data[:size])
        assert info.value.reason == ("truncated" if size < MIN_FRAME_BYTES else "crc"), size


@pytest.mark.parametrize("name", sorted(GOLDEN_V3))
def test_every_single_bit_flip_of_a_golden_frame_is_rejected(name: str) -> None:
    data, outcomes = GOLDEN_V3[name].data, Counter[str]()
    for i in range(len(data)):
        for bit in range(8):
            with pytest.raises(WireError) as info:
                decode_chain_frame(data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :])
            outcomes[info.value.reason] += 1
    assert outcomes == {"magic": 16, "version": 8, "crc": 8 * (len(data) - 3)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_records=20))
def test_every_cut_of_a_random_frame_raises_wire_error(frame: ChainFrame) -> None:
    data = encode_chain_frame(frame)
    for size in range(len(data)):
        with pytest.raises(WireError):
            decode_chain_frame(data[:size])


def check_decodes_or_rejects(data: bytes) -> None:
    """Either a WireError, or a frame that encodes back to the same bytes (NaN aside)."""
    try:
        frame = decode_chain_frame(data)
    except WireError:
        return
    again = encode_chain_frame(frame)
    assert canon(decode_chain_frame(again)) == canon(frame)
    if not has_nan(frame):
        assert again == data


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=200)
    | st.binary(max_size=200).map(lambda b: b"ST\x03" + b)
    | st.binary(max_size=200).map(lambda b: seal(b"ST\x03" + b))  # past the CRC
)
def test_random_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    check_decodes_or_rejects(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_records=20), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                        min_size=1, max_size=4))  # fmt: skip
def test_mutated_frames_with_a_fixed_crc_decode_or_raise_wire_error(
    frame: ChainFrame, changes: list[tuple[int, int]]
) -> None:
    body = bytearray(encode_chain_frame(frame)[:-4])
    for where, value in changes:
        body[4 + where % (len(body) - 4)] = value  # past magic, version and flags
    check_decodes_or_rejects(seal(bytes(body)))


# --------------------------------------------------------------------------- encoder checks

CHAINED = GOLDEN_V3["chained"].frame
KEYED = GOLDEN_V3["key"].frame
ENCODE_REJECTS = [
    ("keys_descending", replace(KEYED, keys=(0, 2, 1)), "keys_order"),
    ("keys_repeated", replace(KEYED, keys=(0, 1, 1)), "keys_order"),
    ("key_equal_to_count", replace(KEYED, keys=(0, 3)), "key_range"),
    ("key_negative", replace(CHAINED, keys=(-1,)), "key_range"),
    ("not_chained_without_key_at_0", replace(KEYED, keys=(1,)), "no_key_start"),
    ("chained_with_seq_0", replace(CHAINED, seq=0), "chain_seq"),
    ("deltas_all_period", replace(KEYED, deltas=(0, 0)), "needless_irregular"),
    ("deltas_one_short", replace(KEYED, deltas=(5,)), "deltas_length"),
    ("count_0", replace(CHAINED, count=0), "n_records"),
    ("count_4097", replace(CHAINED, count=MAX_RECORDS + 1), "n_records"),
    ("model_ref_7_bytes", replace(KEYED, head=HEAD._replace(model_ref=REF[:7])), "model_ref"),
    ("period_0", replace(KEYED, head=HEAD._replace(period_ms=0)), "period_range"),
    ("L_256", replace(KEYED, head=HEAD._replace(L=256)), "L_range"),
    ("K_0", replace(KEYED, head=HEAD._replace(K=0)), "K_range"),
    ("K_over_2_24", replace(KEYED, head=HEAD._replace(K=MAX_K + 1)), "K_range"),
    ("t0_over_u64", replace(KEYED, head=HEAD._replace(t0_ms=2**64)), "time_range"),
    ("bd_seq_negative", replace(CHAINED, bd_seq=-1), "field_range"),
    ("seq_over_u32", replace(CHAINED, seq=2**32), "field_range"),
    ("gap_in_a_key_frame", replace(KEYED, gap=1), "field_range"),
    ("gap_over_i64", replace(CHAINED, gap=2**63), "time_range"),
    ("step_back_in_a_key_frame", replace(KEYED, deltas=(0, -1001)), "time_order"),
    ("keys_a_list", replace(CHAINED, keys=[0]), "field_type"),  # type: ignore[arg-type]
    ("payload_bytearray", replace(CHAINED, payload=bytearray(2)), "field_type"),  # type: ignore[arg-type]
    ("seq_float", replace(CHAINED, seq=1.0), "field_type"),  # type: ignore[arg-type]
    ("audit_one_short", replace(KEYED, audit=((1.0,), None)), "audit_count"),
    ("audit_all_none", replace(KEYED, audit=(None, None, None)), "audit_count"),
    ("audit_lengths_differ", replace(KEYED, audit=((1.0,), (1.0, 2.0), None)), "audit_length"),
    ("audit_over_float32", replace(KEYED, audit=((1e39,), None, None)), "audit_value"),
    ("too_large", replace(CHAINED, payload=bytes(MAX_FRAME_BYTES)), "too_large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "reason"), [m[1:] for m in ENCODE_REJECTS], ids=[m[0] for m in ENCODE_REJECTS]
)
def test_encode_rejects_frame_that_breaks_the_format(frame: ChainFrame, reason: str) -> None:
    with pytest.raises(WireError) as info:
        encode_chain_frame(frame)
    assert info.value.reason == reason


def test_chain_frame_refuses_times_that_go_back_and_a_head_that_disagrees() -> None:
    with pytest.raises(WireError) as info:
        chain_frame(7, 43, [T0 + 500], 1000, [], b"", None, T0 + 600)
    assert info.value.reason == "time_order"
    with pytest.raises(ValueError, match="head"):
        chain_frame(7, 42, [T0 + 1], 1000, [0], b"", HEAD, None)
    with pytest.raises(ValueError, match="prev_last_ms"):
        chain_frame(7, 43, [T0], 1000, [], b"", None, None)


def test_chain_frame_drops_an_audit_without_values_and_writes_regular_times() -> None:
    frame = chain_frame(7, 43, [T0, T0 + 1000], 1000, [1], b"", None, T0 - 1000,
                        audit=[None, None])  # fmt: skip
    assert (frame.audit, frame.deltas, frame.gap, frame.keys) == (None, None, 0, (1,))
