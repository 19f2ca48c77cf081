"""Wire frames: golden bytes from docs/wire-format.md (version 2, and version 1 still read),
round trips, the CRC against every flipped bit and byte, and hostile input."""

from __future__ import annotations

import itertools
import math
import random
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetel.shared.errors import WireError
from sparsetel.shared.wire import (
    FRAME_OVERHEAD,
    HEADER_SIZE,
    HEADER_SIZE_V1,
    MAX_FRAME_BYTES,
    MAX_RECORDS,
    Frame,
    Record,
    code_bits,
    decode_frame,
    encode_frame,
    mqtt_publish_overhead,
    record_bits,
    records_per_frame,
    wire_bytes_per_measurement,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
REF = bytes.fromhex("0123456789abcdef")
U64 = 2**64 - 1
NAN = float("nan")

GOLDEN_FRAMES = {
    "regular": Frame(REF, 7, 42, 4, 128, 1000, (
        Record(1700000000000, (3, 17, 90)),
        Record(1700000001000, ()),
        Record(1700000002000, (5, 5, 127)),
    )),
    "irregular": Frame(REF, 7, 43, 3, 1000, 1000, (
        Record(1700000003000, (1,)),
        Record(1700000004000, (2, 999)),
        Record(1700000004250, ()),
        Record(1700000006250, (0, 0, 512)),
    )),
    "audit": Frame(REF, 6, 9, 2, 16, 1000, (
        Record(1699999990000, (4,), (-95.5, NAN)),
        Record(1699999991000, (1, 15)),
        Record(1699999992000, (), (12.25, 3.0)),
    ), historical=True),
}  # fmt: skip

GOLDEN_FRAMES |= {f"v1_{name}": replace(f, version=1) for name, f in GOLDEN_FRAMES.items()}

GOLDEN_HEX = {
    "regular": """
        53 54 02 00 01 23 45 67 89 ab cd ef 00 00 00 07
        00 00 00 2a 00 00 01 8b cf e5 68 00 00 00 03 e8
        00 03 04 00 80 00 00 00 60 c8 da 0c 28 5f e0 51
        6a 71 a1""",
    "irregular": """
        53 54 02 04 01 23 45 67 89 ab cd ef 00 00 00 07
        00 00 00 2b 00 00 01 8b cf e5 73 b8 00 00 03 e8
        00 04 03 03 e8 00 00 00 00 e8 07 fa 01 d0 0f 40
        18 02 f9 cc 00 00 20 00 2a 6d 61 f1""",
    "audit": """
        53 54 02 03 01 23 45 67 89 ab cd ef 00 00 00 06
        00 00 00 09 00 00 01 8b cf e5 40 f0 00 00 03 e8
        00 03 02 00 10 00 00 00 52 1f 00 00 02 a0 c2 bf
        00 00 7f c0 00 00 41 44 00 00 40 40 00 00 d0 b3
        42 32""",
    "v1_regular": """
        53 54 01 00 01 23 45 67 89 ab cd ef 00 00 00 07
        00 00 00 2a 00 00 01 8b cf e5 68 00 00 00 03 e8
        00 03 04 00 80 60 c8 da 0c 28 5f e0""",
    "v1_irregular": """
        53 54 01 04 01 23 45 67 89 ab cd ef 00 00 00 07
        00 00 00 2b 00 00 01 8b cf e5 73 b8 00 00 03 e8
        00 04 03 03 e8 00 e8 07 fa 01 d0 0f 40 18 02 f9
        cc 00 00 20 00""",
    "v1_audit": """
        53 54 01 03 01 23 45 67 89 ab cd ef 00 00 00 06
        00 00 00 09 00 00 01 8b cf e5 40 f0 00 00 03 e8
        00 03 02 00 10 52 1f 00 00 02 a0 c2 bf 00 00 7f
        c0 00 00 41 44 00 00 40 40 00 00""",
}
GOLDEN = {name: bytes.fromhex(text) for name, text in GOLDEN_HEX.items()}
V2_NAMES = ("regular", "irregular", "audit")


def seal(body: bytes) -> bytes:
    """A version 2 frame: `body` (everything before the CRC) and its CRC-32, big-endian."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def as_v2(v1: bytes) -> bytes:
    """The version 1 frame `v1` as version 2: codec 0, no header extension, the CRC."""
    return seal(v1[:2] + b"\x02" + v1[3:HEADER_SIZE_V1] + b"\x00\x00\x00" + v1[HEADER_SIZE_V1:])


def canon(frame: Frame) -> Frame:
    """The frame with NaN audit values made comparable (NaN != NaN in Python)."""

    def fix(audit: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if audit is None else tuple(-1e300 if math.isnan(v) else v for v in audit)

    records = tuple(Record(r.t_ms, tuple(r.codes), fix(r.audit)) for r in frame.records)
    return replace(frame, records=records)


def has_nan(frame: Frame) -> bool:
    return any(r.audit is not None and any(map(math.isnan, r.audit)) for r in frame.records)


# --------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encode_matches_golden_bytes(name: str) -> None:
    assert encode_frame(GOLDEN_FRAMES[name]) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decode_golden_bytes_gives_the_frame(name: str) -> None:
    assert canon(decode_frame(GOLDEN[name])) == canon(GOLDEN_FRAMES[name])


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_decode_accepts_any_byte_buffer_like_a_paho_payload(buffer: type) -> None:
    data = GOLDEN["audit"]
    assert canon(decode_frame(buffer(data))) == canon(decode_frame(data))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_spec_document_shows_the_golden_bytes(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- golden:{name} -->\s*```\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/wire-format.md has no golden:{name} block"
    assert bytes.fromhex(match.group(1)) == GOLDEN[name]


def test_audit_golden_carries_nan_as_missing() -> None:
    first = decode_frame(GOLDEN["audit"]).records[0].audit
    assert first is not None and first[0] == -95.5 and math.isnan(first[1])


def test_header_is_40_bytes_and_a_frame_adds_44_with_its_crc() -> None:
    assert (HEADER_SIZE, FRAME_OVERHEAD, HEADER_SIZE_V1) == (40, 44, 37)


@pytest.mark.parametrize("name", V2_NAMES)
def test_v2_frame_is_the_v1_frame_with_codec_extension_length_and_crc(name: str) -> None:
    v1, v2 = GOLDEN[f"v1_{name}"], GOLDEN[name]
    body = v1[:2] + b"\x02" + v1[3:37] + b"\x00" + b"\x00\x00" + v1[37:]
    assert v2 == body + zlib.crc32(body).to_bytes(4, "big") == as_v2(v1)


def test_crc_is_crc32_iso_hdlc_as_zlib_computes_it() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the check value the spec quotes


@pytest.mark.parametrize("name", V2_NAMES)
def test_v1_frames_are_still_read_as_version_1(name: str) -> None:
    frame = decode_frame(GOLDEN[f"v1_{name}"])
    assert frame.version == 1 and decode_frame(GOLDEN[name]).version == 2
    assert canon(replace(frame, version=2)) == canon(decode_frame(GOLDEN[name]))


def test_header_extension_is_skipped_and_kept() -> None:
    frame = replace(GOLDEN_FRAMES["regular"], extension=b"\xa5\x00\x01")
    data = encode_frame(frame)
    assert data[37:43] == b"\x00\x00\x03\xa5\x00\x01"
    assert data[43:-4] == GOLDEN["regular"][40:-4]  # the sections, after the extension
    assert decode_frame(data) == frame


# --------------------------------------------------------------------------- round trips


@st.composite
def frames(draw: st.DrawFn, max_records: int = 300) -> Frame:
    """Valid frames: structure drawn by hypothesis, bulk content from a seeded generator."""
    L, K = draw(st.integers(1, 16)), draw(st.integers(2, 4096))
    n = draw(st.integers(1, max_records))
    period = draw(st.sampled_from([0, 1, 1000]) | st.integers(0, 2**32 - 1))
    base = draw(st.sampled_from([0, 1700000000000]) | st.integers(0, 2**48))
    regular, audit_dim = draw(st.booleans()), draw(st.sampled_from([0, 1, 2, 9]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    times = [base]
    for _ in range(n - 1):
        step = period if regular else rng.choice([0, period, rng.randrange(2**33)])
        times.append(times[-1] + step)
    extremes = [0, K - 1]
    records = []
    for t in times:
        nnz = rng.choice([0, L, rng.randint(0, L)])
        codes = tuple(sorted(rng.choice([*extremes, rng.randrange(K)]) for _ in range(nnz)))
        audit = None
        if audit_dim and rng.random() < 0.6:
            audit = tuple(
                rng.choice([*AUDIT_VALUES, rng.uniform(-1e4, 1e4)]) for _ in range(audit_dim)
            )
            audit = struct.unpack(f">{audit_dim}f", struct.pack(f">{audit_dim}f", *audit))
        records.append(Record(t, codes, audit))
    ref = draw(st.binary(min_size=8, max_size=8))
    bd_seq, seq = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    version = draw(st.sampled_from([2, 2, 1]))
    extension = draw(st.just(b"") | st.binary(max_size=40)) if version == 2 else b""
    return Frame(ref, bd_seq, seq, L, K, period, tuple(records), draw(st.booleans()), version,
                 extension)  # fmt: skip


AUDIT_VALUES = [0.0, -0.0, NAN, math.inf, -math.inf, 1e-45, 3.4028234663852886e38, -95.5]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_decode_inverts_encode_for_any_valid_frame(frame: Frame) -> None:
    data = encode_frame(frame)
    assert canon(decode_frame(data)) == canon(frame)
    times = [r.t_ms for r in frame.records]
    regular = all(b - a == frame.period_ms for a, b in itertools.pairwise(times))
    assert bool(data[3] & 0x04) == (not regular)


def test_largest_frame_round_trips() -> None:
    rng = random.Random(1)
    L, K, n = 255, 65535, 60
    records = tuple(
        Record(1000 * i, tuple(sorted(rng.randrange(K) for _ in range(L)))) for i in range(n)
    )
    frame = Frame(REF, 1, 2, L, K, 1000, records)
    data = encode_frame(frame)
    assert len(data) == FRAME_OVERHEAD + math.ceil(n * record_bits(L, L, K) / 8)
    assert decode_frame(data) == frame


def test_max_records_of_empty_codes_round_trip() -> None:
    frame = Frame(REF, 1, 2, 1, 2, 5, tuple(Record(5 * i, ()) for i in range(MAX_RECORDS)))
    data = encode_frame(frame)
    assert len(data) == FRAME_OVERHEAD + MAX_RECORDS // 8
    assert decode_frame(data) == frame


# --------------------------------------------------------------------------- hostile input


def header(
    *, magic: bytes = b"ST", version: int = 1, flags: int = 0, base: int = 1700000000000,
    period: int = 1000, count: int = 3, L: int = 4, K: int = 128,
) -> bytes:  # fmt: skip
    return struct.pack(
        ">2sBB8sIIQIHBH", magic, version, flags, REF, 7, 42, base, period, count, L, K
    )


def bits(text: str) -> bytes:
    """'011 0000011' -> the bytes of those bits, MSB first, zero-padded."""
    digits = text.replace(" ", "")
    digits += "0" * (-len(digits) % 8)
    return int(digits or "0", 2).to_bytes(len(digits) // 8, "big")


# Version 1 bytes: the checks after the header are the same in both versions
# (`test_decode_rejects_malformed_v2_frame_with_a_good_crc_as_v1`).
REGULAR, AUDIT = GOLDEN["v1_regular"], GOLDEN["v1_audit"]
IRR2 = header(flags=0x04, count=2)  # two irregular records, then varints and codes "000 000"
EMPTY2 = bits("000 000")
AUDIT_HEAD = AUDIT[: HEADER_SIZE_V1 + 3]  # header and codes of the audit golden
MALFORMED = [
    ("too_large", REGULAR + bytes(MAX_FRAME_BYTES), "too_large"),
    ("empty", b"", "truncated"),
    ("header_cut", REGULAR[: HEADER_SIZE_V1 - 1], "truncated"),
    ("codes_cut", header(count=1) + bits("011 0000011"), "truncated"),
    ("varint_cut", IRR2 + b"\x00\xe8", "truncated"),
    ("audit_values_cut", AUDIT[:-1], "truncated"),
    ("bad_magic", b"SX" + REGULAR[2:], "magic"),
    ("version_0", header(version=0) + REGULAR[HEADER_SIZE_V1:], "version"),
    ("version_3", header(version=3) + REGULAR[HEADER_SIZE_V1:], "version"),
    ("reserved_flag", header(flags=0x08) + REGULAR[HEADER_SIZE_V1:], "flags"),
    ("no_records", header(count=0), "n_records"),
    ("too_many_records", header(count=MAX_RECORDS + 1) + bytes(2000), "n_records"),
    ("L_zero", header(L=0) + REGULAR[HEADER_SIZE_V1:], "L_range"),
    ("K_one", header(K=1) + REGULAR[HEADER_SIZE_V1:], "K_range"),
    ("varint_11_bytes", IRR2 + b"\x00" + b"\x80" * 10 + b"\x01" + EMPTY2, "varint_overflow"),
    ("varint_above_u64", IRR2 + b"\x00" + b"\xff" * 9 + b"\x02" + EMPTY2, "varint_overflow"),
    ("varint_not_minimal", IRR2 + b"\x00\xe8\x87\x00" + EMPTY2, "varint_overlong"),
    ("first_delta_not_0", IRR2 + b"\x01\xe8\x07" + EMPTY2, "first_delta"),
    ("irregular_past_u64", header(flags=4, count=2, base=U64 - 5) + b"\x00\x0a" + EMPTY2,
     "time_range"),
    ("regular_past_u64", header(base=U64 - 1000) + bits("000 000 000"), "time_range"),
    ("irregular_but_regular", IRR2 + b"\x00\xe8\x07" + EMPTY2, "needless_irregular"),
    ("irregular_one_record", header(flags=4, count=1) + b"\x00" + bits("000"),
     "needless_irregular"),
    ("nnz_5_of_L_4", header(count=1) + bits("101"), "nnz_gt_L"),
    ("indices_descending", header(count=1) + bits("010 0000101 0000011"), "unsorted"),
    ("index_120_of_K_100", header(count=1, K=100) + bits("001 1111000"), "index_ge_K"),
    ("padding_bit_set", REGULAR[:-1] + b"\xe1", "padding"),
    ("audit_D_zero", header(flags=2, L=2, K=16) + AUDIT_HEAD[HEADER_SIZE_V1:] + b"\x00\x00\xa0",
     "audit_dim"),
    ("bitmap_spare_bit", AUDIT_HEAD + b"\x00\x02\xa1" + AUDIT[-16:], "bitmap_padding"),
    ("audit_flag_no_audit", AUDIT_HEAD + b"\x00\x02\x00", "audit_empty"),
    ("trailing_byte", REGULAR + b"\x00", "trailing"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_decode_rejects_malformed_frame(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(data)
    assert info.value.reason == reason


V2 = GOLDEN["regular"]
V2_SECTIONS = V2[HEADER_SIZE:-4]  # the codes of the regular golden
MALFORMED_V2 = [
    ("v2_shorter_than_header_and_crc", V2[: FRAME_OVERHEAD - 1], "truncated"),
    ("crc_bit_flipped", V2[:-1] + bytes([V2[-1] ^ 0x01]), "crc"),
    ("crc_of_another_frame", V2[:-4] + GOLDEN["audit"][-4:], "crc"),
    ("byte_after_the_crc", V2 + b"\x00", "crc"),
    ("crc_little_endian", V2[:-4] + V2[-4:][::-1], "crc"),
    ("version_3_with_a_crc", seal(b"ST\x03" + V2[3:-4]), "version"),
    ("codec_1", seal(V2[:HEADER_SIZE_V1] + b"\x01\x00\x00" + V2_SECTIONS), "codec"),
    ("codec_255", seal(V2[:HEADER_SIZE_V1] + b"\xff\x00\x00" + V2_SECTIONS), "codec"),
    ("extension_past_the_end",
     seal(V2[:HEADER_SIZE_V1] + b"\x00\x00\x08" + V2_SECTIONS), "extension"),
    ("extension_of_65535", seal(V2[:HEADER_SIZE_V1] + b"\x00\xff\xff" + V2_SECTIONS),
     "extension"),
    ("extension_eats_the_codes",
     seal(V2[:HEADER_SIZE_V1] + b"\x00\x00\x07" + V2_SECTIONS), "truncated"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"), [m[1:] for m in MALFORMED_V2], ids=[m[0] for m in MALFORMED_V2]
)
def test_decode_rejects_malformed_v2_frame(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(data)
    assert info.value.reason == reason


SHARED = [m for m in MALFORMED if len(m[1]) >= HEADER_SIZE_V1 and m[1][2] == 1]


@pytest.mark.parametrize(("data", "reason"), [m[1:] for m in SHARED], ids=[m[0] for m in SHARED])
def test_decode_rejects_malformed_v2_frame_with_a_good_crc_as_v1(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(as_v2(data))
    assert info.value.reason == reason


def test_every_documented_reject_reason_has_a_malformed_case() -> None:
    text = DOC.read_text(encoding="utf-8").split("### Reject reasons")[1].split("\n## ")[0]
    table = text.split("| tag")[1].split("\n\n")[0]
    documented = set(re.findall(r"^\| `(\w+)`", table, re.MULTILINE))
    assert documented == {m[2] for m in MALFORMED + MALFORMED_V2}


@pytest.mark.parametrize("name", V2_NAMES)
def test_decode_of_every_cut_of_a_v1_frame_raises_truncated(name: str) -> None:
    data = GOLDEN[f"v1_{name}"]
    for size in range(len(data)):
        with pytest.raises(WireError) as info:
            decode_frame(data[:size])
        assert info.value.reason == "truncated", size


@pytest.mark.parametrize("name", V2_NAMES)
def test_decode_of_every_cut_of_a_v2_frame_is_truncated_or_fails_the_crc(name: str) -> None:
    data = GOLDEN[name]
    for size in range(len(data)):
        with pytest.raises(WireError) as info:
            decode_frame(data[:size])
        assert info.value.reason == ("truncated" if size < FRAME_OVERHEAD else "crc"), size


def flip_outcomes(data: bytes, changes: Callable[[int], Iterable[int]]) -> Counter[str]:
    """How each changed copy of `data` fails: byte i replaced by every value changes(i) gives,
    counted by reject reason ("decoded" for a copy that decodes)."""
    outcomes: Counter[str] = Counter()
    for i in range(len(data)):
        for value in changes(data[i]):
            try:
                decode_frame(data[:i] + bytes([value]) + data[i + 1 :])
            except WireError as exc:
                outcomes[exc.reason] += 1
            else:
                outcomes["decoded"] += 1
    return outcomes


@pytest.mark.parametrize("name", V2_NAMES)
def test_every_single_bit_flip_of_a_v2_frame_is_rejected(name: str) -> None:
    data = GOLDEN[name]
    outcomes = flip_outcomes(data, lambda byte: [byte ^ (1 << b) for b in range(8)])
    # The magic and version bytes are read before the CRC; every other flip fails the CRC.
    assert outcomes == {"magic": 16, "version": 8, "crc": 8 * (len(data) - 3)}


@pytest.mark.parametrize("name", V2_NAMES)
def test_every_single_byte_change_of_a_v2_frame_is_rejected(name: str) -> None:
    data = GOLDEN[name]
    outcomes = flip_outcomes(data, lambda byte: [v for v in range(256) if v != byte])
    assert "decoded" not in outcomes
    assert outcomes["crc"] == 255 * (len(data) - 3) and outcomes["magic"] == 2 * 255
    # A version byte of 1 reads the frame as version 1 (no CRC): it fails that parse instead.
    assert outcomes["version"] == 254 and outcomes.total() == 255 * len(data)


def test_a_v1_frame_has_no_such_protection() -> None:
    outcomes = flip_outcomes(GOLDEN["v1_regular"], lambda byte: [byte ^ (1 << b) for b in range(8)])
    assert outcomes["decoded"] > 200  # of 352: what version 2 exists for


@settings(max_examples=40, deadline=None)
@given(frames(max_records=60))
def test_decode_of_every_cut_of_a_random_frame_raises_wire_error(frame: Frame) -> None:
    data = encode_frame(frame)
    for size in range(len(data)):
        with pytest.raises(WireError):
            decode_frame(data[:size])


def check_decodes_or_rejects(data: bytes) -> None:
    """Either a WireError, or a frame that encodes back to the same bytes (NaN payloads aside)."""
    try:
        frame = decode_frame(data)
    except WireError:
        return
    again = encode_frame(frame)
    assert canon(decode_frame(again)) == canon(frame)
    if not has_nan(frame):
        assert again == data


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"ST\x01" + b)
    | st.binary(max_size=300).map(lambda b: seal(b"ST\x02" + b))  # past the CRC
)
def test_random_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    check_decodes_or_rejects(data)


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["set", "xor", "insert", "delete"]), st.integers(0, 10**6),
              st.integers(0, 255)),
    min_size=1, max_size=4,
)  # fmt: skip


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        at = where % (len(out) + 1)
        if kind == "insert":
            out.insert(at, value)
        elif at < len(out):
            if kind == "delete":
                del out[at]
            else:
                out[at] = value if kind == "set" else out[at] ^ (1 << (value % 8))
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_records=40), MUTATIONS)
def test_mutated_frames_decode_or_raise_wire_error(
    frame: Frame, mutations: list[tuple[str, int, int]]
) -> None:
    check_decodes_or_rejects(mutate(encode_frame(frame), mutations))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_records=40), MUTATIONS)
def test_mutated_v2_frames_with_a_fixed_crc_decode_or_raise_wire_error(
    frame: Frame, mutations: list[tuple[str, int, int]]
) -> None:
    data = encode_frame(replace(frame, version=2))
    check_decodes_or_rejects(seal(mutate(data[:-4], mutations)))


# --------------------------------------------------------------------------- encoder checks


def golden(**changes: object) -> Frame:
    base = GOLDEN_FRAMES["regular"]
    return Frame(**{**{f: getattr(base, f) for f in Frame.__dataclass_fields__}, **changes})


def recs(*codes: tuple[int, ...]) -> tuple[Record, ...]:
    return tuple(Record(1000 * i, c) for i, c in enumerate(codes))


ENCODE_REJECTS = [
    ("model_ref_7_bytes", golden(model_ref=b"1234567"), "model_ref"),
    ("seq_float", golden(seq=1.0), "field_type"),
    ("bd_seq_negative", golden(bd_seq=-1), "field_range"),
    ("seq_over_u32", golden(seq=2**32), "field_range"),
    ("period_over_u32", golden(period_ms=2**32), "field_range"),
    ("L_zero", golden(L=0), "L_range"),
    ("L_256", golden(L=256), "L_range"),
    ("K_one", golden(K=1), "K_range"),
    ("K_65536", golden(K=65536), "K_range"),
    ("no_records", golden(records=()), "n_records"),
    ("too_many_records", golden(records=recs(*[()] * (MAX_RECORDS + 1))), "n_records"),
    ("nnz_5_of_L_4", golden(records=recs((1, 2, 3, 4, 5))), "nnz_gt_L"),
    ("index_128_of_K_128", golden(records=recs((1, 128))), "index_ge_K"),
    ("index_negative", golden(records=recs((-1, 2))), "index_negative"),
    ("unsorted", golden(records=recs((5, 3))), "unsorted"),
    ("code_not_int", golden(records=recs((1.5,))), "field_type"),  # type: ignore[arg-type]
    ("time_backwards", golden(records=(Record(2000, ()), Record(1000, ()))), "time_order"),
    ("time_negative", golden(records=(Record(-1, ()),)), "time_range"),
    ("time_over_u64", golden(records=(Record(2**64, ()),)), "time_range"),
    ("audit_lengths_differ",
     golden(records=(Record(0, (), (1.0, 2.0)), Record(1000, (), (1.0,)))), "audit_length"),
    ("audit_empty_tuple", golden(records=(Record(0, (), ()),)), "audit_dim"),
    ("audit_over_float32", golden(records=(Record(0, (), (1e39,)),)), "audit_value"),
    ("audit_not_number", golden(records=(Record(0, (), ("x",)),)), "audit_value"),  # type: ignore[arg-type]
    ("too_large", golden(L=255, K=65535, records=recs(*[tuple(range(255))] * 600)),
     "too_large"),
    ("version_3", golden(version=3), "version"),
    ("version_0", golden(version=0), "version"),
    ("version_not_int", golden(version=2.0), "field_type"),
    ("extension_not_bytes", golden(extension=bytearray(2)), "field_type"),
    ("extension_over_u16", golden(extension=bytes(65536)), "extension"),
    ("extension_in_version_1", golden(version=1, extension=b"\x01"), "extension"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "reason"), [m[1:] for m in ENCODE_REJECTS], ids=[m[0] for m in ENCODE_REJECTS]
)
def test_encode_rejects_frame_that_breaks_the_format(frame: Frame, reason: str) -> None:
    with pytest.raises(WireError) as info:
        encode_frame(frame)
    assert info.value.reason == reason


def test_encode_accepts_numpy_like_ints_and_lists() -> None:
    codes = np.array([3, 17, 90], dtype=np.int64)
    frame = golden(
        records=(Record(1700000000000, tuple(codes)), *GOLDEN_FRAMES["regular"].records[1:])
    )
    assert encode_frame(frame) == GOLDEN["regular"]


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("L", "K", "expected"),
    [(1, 2, (1, 1)), (3, 3, (2, 2)), (4, 128, (3, 7)), (4, 129, (3, 8)), (7, 256, (3, 8)),
     (8, 1000, (4, 10)), (255, 65535, (8, 16))],
)  # fmt: skip
def test_code_bits_is_ceil_log2(L: int, K: int, expected: tuple[int, int]) -> None:
    assert code_bits(L, K) == expected
    assert expected == (math.ceil(math.log2(L + 1)), math.ceil(math.log2(K)))


@pytest.mark.parametrize(("L", "K"), [(0, 128), (256, 128), (4, 1), (4, 65536)])
def test_code_bits_rejects_out_of_range(L: int, K: int) -> None:
    with pytest.raises(ValueError):
        code_bits(L, K)


def test_record_bits_counts_nnz_and_indices() -> None:
    assert record_bits(0, 4, 128) == 3
    assert record_bits(3, 4, 128) == 3 + 21
    assert record_bits(2, 3, 1000) == 2 + 20
    with pytest.raises(ValueError):
        record_bits(5, 4, 128)
    with pytest.raises(ValueError):
        record_bits(-1, 4, 128)


@pytest.mark.parametrize(
    ("topic", "payload", "qos", "expected"),
    [
        ("a/b", 10, 0, 1 + 1 + 2 + 3),
        ("a/b", 10, 1, 1 + 1 + 2 + 3 + 2),
        ("a/b", 10, 2, 1 + 1 + 2 + 3 + 2),
        ("é", 0, 0, 1 + 1 + 2 + 2),  # the topic length is in UTF-8 bytes
        ("a/b", 127 - 7, 1, 1 + 1 + 7),  # remaining length 127: one byte
        ("a/b", 128 - 7, 1, 1 + 2 + 7),  # 128: two bytes
        ("a/b", 16383 - 7, 1, 1 + 2 + 7),
        ("a/b", 16384 - 7, 1, 1 + 3 + 7),
        ("a/b", 2097151 - 7, 1, 1 + 3 + 7),
        ("a/b", 2097152 - 7, 1, 1 + 4 + 7),
        ("a/b", 268435455 - 7, 1, 1 + 4 + 7),
    ],
)
def test_mqtt_publish_overhead_follows_mqtt_311(
    topic: str, payload: int, qos: int, expected: int
) -> None:
    assert mqtt_publish_overhead(topic, payload, qos) == expected


@pytest.mark.parametrize(
    ("topic", "payload", "qos"),
    [("a/b", 268435455 - 6, 1), ("", 1, 1), ("a/+", 1, 1), ("a/#", 1, 1), ("a/b", -1, 1),
     ("a/b", 1, 3)],
)  # fmt: skip
def test_mqtt_publish_overhead_rejects_what_mqtt_cannot_send(
    topic: str, payload: int, qos: int
) -> None:
    with pytest.raises(ValueError):
        mqtt_publish_overhead(topic, payload, qos)


def test_wire_bytes_per_measurement_equals_encoded_frames_plus_publish() -> None:
    rng = random.Random(3)
    codes = [tuple(sorted(rng.randrange(128) for _ in range(rng.randint(0, 4)))) for _ in range(10)]
    topic = "sparsetel/v1/g1/DATA/e1"
    total = 0
    for first in (0, 4, 8):
        part = codes[first : first + 4]
        records = tuple(Record(1000 * (first + i), c) for i, c in enumerate(part))
        size = len(encode_frame(Frame(REF, 1, 1, 4, 128, 1000, records)))
        total += size + mqtt_publish_overhead(topic, size, qos=1)
    assert wire_bytes_per_measurement(codes, 4, 128, 1000, 4, topic) == pytest.approx(total / 10)


def test_wire_bytes_per_measurement_shrinks_with_batch() -> None:
    codes = [(1, 2)] * 600
    topic = "sparsetel/v1/g1/DATA/e1"
    sizes = [wire_bytes_per_measurement(codes, 4, 128, 1000, b, topic) for b in (1, 10, 100)]
    assert sizes[0] > sizes[1] > sizes[2] > (3 + 14) / 8


@pytest.mark.parametrize(
    ("codes", "batch"), [([], 10), ([(1,)], 0), ([(1,)], MAX_RECORDS + 1), ([(1, 2, 3, 4, 5)], 1)]
)
def test_wire_bytes_per_measurement_rejects_bad_arguments(
    codes: list[tuple[int, ...]], batch: int
) -> None:
    with pytest.raises(ValueError):
        wire_bytes_per_measurement(codes, 4, 128, 1000, batch, "t")


@pytest.mark.parametrize(
    ("interval_s", "batch", "delay_s", "records"),
    [(1.0, 50, 1.0, 2), (0.5, 50, 1.0, 3), (0.3, 50, 1.0, 4), (0.01, 50, 1.0, 50),
     (1.0, 50, 60.0, 50), (1.0, 50, 10.0, 11), (2.0, 50, 1.0, 1), (1.0, 1, 1.0, 1)],
)  # fmt: skip
def test_records_per_frame_counts_what_arrives_before_the_deadline(
    interval_s: float, batch: int, delay_s: float, records: int
) -> None:
    assert records_per_frame(interval_s, batch, delay_s) == records


def test_records_per_frame_rejects_a_bad_pace() -> None:
    for bad in ((0.0, 50, 1.0), (1.0, 0, 1.0), (1.0, 50, 0.0), (math.nan, 50, 1.0)):
        with pytest.raises(ValueError):
            records_per_frame(*bad)
