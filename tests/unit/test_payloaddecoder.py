"""The compiled payload decoder (`cloud.codec.payloaddecoder`): its range decoder reads what the
reference coder (`shared.rangecoder`) writes, and a payload or a chain state that is not what
an encoder made is refused, saying why. That it decodes every codec's payloads exactly as the
edge's encoder kept them is tests/unit/test_temporalcodec.py's any-codec test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.cloud.codec import payloaddecoder
from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.shared.errors import WireError
from sparsetel.shared.rangecoder import MAX_OVERRUN, FrequencyTable, RangeEncoder
from sparsetel.shared.temporalcodec import MAX_UNITS, ChainState
from sparsetel.shared.temporalpayload import encode_payload
from tests.helpers import small_temporal_codec


@st.composite
def _tables_and_symbols(draw: st.DrawFn) -> tuple[list[FrequencyTable], list[tuple[int, int]]]:
    counts = st.lists(st.integers(0, 1000), min_size=1, max_size=40)
    tables = [FrequencyTable.from_counts(c) for c in draw(st.lists(counts, min_size=1, max_size=4))]
    picks = draw(st.lists(st.tuples(st.integers(0, len(tables) - 1), st.integers(0, 10**6))))
    return tables, [(t, s % tables[t].size) for t, s in picks]


@settings(max_examples=200, deadline=None)
@given(_tables_and_symbols())
def test_the_compiled_range_decoder_reads_what_the_reference_encoder_wrote(
    case: tuple[list[FrequencyTable], list[tuple[int, int]]],
) -> None:
    tables, symbols = case
    encoder = RangeEncoder()
    for t, s in symbols:
        encoder.encode(s, tables[t])
    message = encoder.finish()
    starts = np.array([s for t in tables for s in t.starts], dtype=np.int64)
    freqs = np.array([f for t in tables for f in t.freqs], dtype=np.int64)
    size = np.array([t.size for t in tables], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    data = np.frombuffer(message + bytes(MAX_OVERRUN), dtype=np.uint8)
    state = np.array([int.from_bytes(data[:4].tobytes(), "big"), 2**32 - 1, 4, 0, 0])
    read = [payloaddecoder._symbol(state, data, starts, freqs, offset, size, t) for t, _ in symbols]
    assert read == [s for _, s in symbols]
    assert state[2] - len(message) >= 3  # a whole message: its final window read


def _chained_payload() -> tuple[bytes, ChainState]:
    codec = small_temporal_codec()
    _, first = encode_payload(codec, np.zeros((1, 3)), [True], None)
    payload, _ = encode_payload(codec, np.full((2, 3), 1.3), [False, False], first.state)
    return payload, first.state


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p[:-1], "payload_overrun"),
        (lambda p: p + b"\x00\x00", "payload_trailing"),
        (lambda p: b"\xff" * len(p), "payload_invalid"),
    ],
    ids=["cut short", "bytes after the last symbol", "a value no encoder writes"],
)
def test_a_payload_that_is_not_an_encoders_is_refused_with_its_reason(change, reason) -> None:
    payload, state = _chained_payload()
    codec = small_temporal_codec()
    assert len(decode_payload(codec, payload, [False, False], state).codes) == 2
    with pytest.raises(WireError) as info:
        decode_payload(codec, change(payload), [False, False], state)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "state",
    [
        ChainState((MAX_UNITS + 1, 0, 0), (True,) * 3, ((0,) * 3, (0,) * 3)),
        ChainState((2**70, 0, 0), (True,) * 3, ((0,) * 3, (0,) * 3)),
        ChainState((0, 0, 0), (True,) * 3, ((2 * MAX_UNITS + 1, 0, 0), (0,) * 3)),
        ChainState((0, 0), (True,) * 2, ((), ())),
    ],
    ids=["units past the bound", "units past int64", "a move past the bound", "two KPIs"],
)
def test_a_chain_state_that_no_decoder_left_is_refused(state: ChainState) -> None:
    payload, _ = _chained_payload()
    with pytest.raises(ValueError, match="chain state"):
        decode_payload(small_temporal_codec(), payload, [False, False], state)
