"""The shipped temporal codec (`shared.temporalcodec`): edge and cloud agree bit for bit, at
most L codes per measurement, context across frames, hostile codecs and payloads rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.shared.errors import ModelMismatchError, WireError
from sparsetel.shared.rangecoder import FrequencyTable
from sparsetel.shared.temporalcodec import (
    ChainState,
    TemporalCodec,
    decode_payload,
    encode_payload,
    table_counts,
)

D, L = 3, 3


def small_codec(gates: bool = True) -> TemporalCodec:
    """A hand-made codec: KPI j moves by ±1 and ±2 units; four key words; uniform tables."""
    group = np.repeat(np.arange(D), 4)
    delta = np.tile([1, 2, -1, -2], D)
    u = FrequencyTable.uniform
    sizes = [int(np.sum(group == j)) for j in range(D)]
    return TemporalCodec(
        kpis=("a", "b", "c"),
        L=L,
        gates=gates,
        clip=6.0,
        span=6.0,
        sigma2=1e-3,
        mean=np.zeros(D),
        std=np.ones(D),
        log=np.zeros(D, dtype=bool),
        unit=np.array([0.1, 0.25, 0.5]),
        origin=np.zeros(D),
        weight=np.ones(D),
        group=group,
        delta=delta,
        keys=np.array([[0, 0, 0], [10, 4, 2], [-10, -4, -2], [5, -4, 0]]),
        log_prior=np.full((2, len(group)), -np.log(len(group))),
        gate_prior=np.zeros((2, L)),
        key_table=u(4),
        kpi_tables=tuple(tuple(u(D + 1) for _ in range(D + 1)) for _ in range(2)),
        word_tables=tuple(tuple(u(n) for n in sizes) for _ in range(2)),
        mask_table=u(2),
    )


def walk(n: int, seed: int, missing: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.15, (n, D)), axis=0)
    x[rng.random((n, D)) < missing] = np.nan
    return x


def test_cloud_decodes_exactly_what_the_edge_reconstructs_across_chained_frames() -> None:
    codec, x = small_codec(), walk(40, 0)
    state = None
    for start in range(0, 40, 7):
        part = x[start : start + 7]
        keys = [start + i in (0, 21) for i in range(len(part))]
        payload, edge = encode_payload(codec, part, keys, state)
        cloud = decode_payload(codec, payload, keys, state)
        assert np.array_equal(cloud.recon, edge.recon, equal_nan=True)
        assert cloud.codes == edge.codes and cloud.state == edge.state
        assert np.array_equal(np.isnan(cloud.recon), np.isnan(part))
        state = cloud.state


def test_every_measurement_uses_at_most_L_codes_key_word_included() -> None:
    codec = small_codec(gates=False)
    x = walk(60, 1, missing=0.0) * 5
    keys = [i % 10 == 0 for i in range(60)]
    _, decoded = encode_payload(codec, x, keys, None)
    assert max(len(c) for c in decoded.codes) == L
    assert all(c[0] >= codec.K for c, k in zip(decoded.codes, keys, strict=True) if k)


def test_context_costs_fewer_bits_than_a_key_every_measurement() -> None:
    codec, x = small_codec(), walk(200, 2, missing=0.0)
    chained, _ = encode_payload(codec, x, [i == 0 for i in range(200)], None)
    keyed, _ = encode_payload(codec, x, [True] * 200, None)
    assert len(chained) < len(keyed)


def test_a_frame_without_a_predecessor_must_start_with_a_key() -> None:
    codec = small_codec()
    with pytest.raises(ValueError, match="key"):
        encode_payload(codec, walk(3, 3), [False, False, False], None)
    with pytest.raises(WireError) as info:
        decode_payload(codec, b"\x12", [False], None)
    assert info.value.reason == "no_key"


def test_symbol_counts_fit_tables_that_code_the_stream_in_fewer_bits() -> None:
    codec, x = small_codec(), walk(300, 4)
    keys = [i % 50 == 0 for i in range(300)]
    counts = table_counts(codec)
    encode_payload(codec, x, keys, None, counts)
    fitted = TemporalCodec.from_json(
        json.dumps(
            {
                **codec.to_dict(),
                "kpi_tables": [
                    [FrequencyTable.from_counts(counts[(3, k, p)]).to_list() for p in range(D + 1)]
                    for k in range(2)
                ],
                "mask_table": FrequencyTable.from_counts(counts[(0,)]).to_list(),
            }
        )
    )
    before, _ = encode_payload(codec, x, keys, None)
    after, decoded = encode_payload(fitted, x, keys, None)
    assert len(after) < len(before)
    assert np.array_equal(
        decode_payload(fitted, after, keys, None).recon, decoded.recon, equal_nan=True
    )


def test_codec_survives_its_json_and_chain_state_its_store() -> None:
    codec = small_codec()
    again = TemporalCodec.from_json(codec.to_json())
    assert again.to_json() == codec.to_json()
    state = ChainState((1, -2, 3), (True, False, True))
    assert ChainState.from_json(state.to_json(), D) == state
    with pytest.raises(ValueError):
        ChainState.from_json('{"units": [1, 2], "mask": [1, 1]}', D)


BAD_CODECS = {
    "format": {"format": "other"},
    "kpis": {"kpis": "abc"},
    "L_float": {"L": 3.0},
    "std_zero": {"std": [1.0, 0.0, 1.0]},
    "unit_negative": {"unit": [0.1, -0.25, 0.5]},
    "delta_zero": {"delta": [0] * 12},
    "group_range": {"group": [7] * 12},
    "key_shape": {"keys": [[0, 0]]},
    "nan_prior": {"log_prior": [[float("nan")] * 12] * 2},
    "table_sum": {"mask_table": [1, 1]},
    "kpi_table_size": {"kpi_tables": [[[16384, 16384]] * 4] * 2},
    "word_tables_missing": {"word_tables": [[], []]},
}


@pytest.mark.parametrize("change", BAD_CODECS.values(), ids=BAD_CODECS.keys())
def test_from_json_rejects_a_malformed_codec_saying_why(change: dict) -> None:
    with pytest.raises(ModelMismatchError, match="bad temporal codec"):
        TemporalCodec.from_json(json.dumps({**small_codec().to_dict(), **change}))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40), st.lists(st.booleans(), min_size=1, max_size=6))
def test_a_hostile_payload_decodes_or_raises_wire_error(data: bytes, keys: list[bool]) -> None:
    keys[0] = True
    try:
        decoded = decode_payload(small_codec(), data, keys, None)
    except WireError:
        return
    assert len(decoded.recon) == len(keys)
    assert max(len(c) for c in decoded.codes) <= L
