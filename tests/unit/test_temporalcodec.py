"""The shipped temporal codec (`shared.temporalcodec`): edge and cloud agree bit for bit, at
most L codes per measurement, context across frames, hostile codecs and payloads rejected."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.shared.errors import ModelMismatchError, WireError
from sparsetel.shared.manifest import KpiNorm, ModelManifest
from sparsetel.shared.temporalcodec import ChainState, TemporalCodec, uniform_tables
from sparsetel.shared.temporalpayload import encode_payload, fitted, table_counts
from tests.codeccases import random_codec, random_walks
from tests.helpers import small_temporal_codec

D, L = 3, 3


def small_codec(lossless: bool = False) -> TemporalCodec:
    return small_temporal_codec(L=L, lossless=lossless)


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
    codec = small_codec()
    x = walk(60, 1, missing=0.0) * 5
    keys = [i % 10 == 0 for i in range(60)]
    _, decoded = encode_payload(codec, x, keys, None)
    assert max(len(c) for c in decoded.codes) <= L
    assert all(c[0] >= codec.K for c, k in zip(decoded.codes, keys, strict=True) if k)
    assert all(sum(w < codec.K for w in c) <= len(codec.groups) for c in decoded.codes)


def test_a_word_moves_a_whole_group_and_its_id_says_how() -> None:
    codec = small_codec()
    word = codec.word_id(0, [2, -1])
    assert codec.word_moves(word) == (0, {0: 2, 1: -1})
    assert codec.word_moves(codec.word_id(1, [30])) == (1, {2: None})  # beyond the digits
    with pytest.raises(ValueError):
        codec.word_moves(codec.K)


def test_a_jump_of_many_steps_is_one_escaped_word_and_decodes_exactly() -> None:
    codec = small_codec()
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [40.0, 0.0, -35.0]])
    payload, edge = encode_payload(codec, x, [True, False, False], None)
    cloud = decode_payload(codec, payload, [True, False, False], None)
    assert np.allclose(cloud.recon[2], [6.0, 0.0, -6.0])  # clamped at the span, in one step
    assert len(cloud.codes[2]) == 2 and cloud.codes == edge.codes


def test_lossless_mode_sends_every_move_and_counts_words_past_L_as_escapes() -> None:
    codec = small_temporal_codec(L=1, lossless=True, groups=((0,), (1,), (2,)))
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.integers(-1, 2, (80, D)), axis=0) * np.array([0.1, 0.25, 0.5])
    x = np.clip(x, -5.0, 5.0)
    keys = [i % 20 == 0 for i in range(80)]
    payload, edge = encode_payload(codec, x, keys, None)
    cloud = decode_payload(codec, payload, keys, None)
    assert np.allclose(cloud.recon, x, atol=1e-9)
    assert cloud.escapes == edge.escapes == sum(max(len(c) - 1, 0) for c in cloud.codes) > 0
    lossy, _ = encode_payload(small_temporal_codec(L=1, groups=((0,), (1,), (2,))), x, keys, None)
    assert len(lossy) < len(payload)


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
    better = TemporalCodec.from_json(fitted(codec, counts).to_json())
    before, _ = encode_payload(codec, x, keys, None)
    after, decoded = encode_payload(better, x, keys, None)
    assert len(after) < len(before)
    assert np.array_equal(
        decode_payload(better, after, keys, None).recon, decoded.recon, equal_nan=True
    )


def test_codec_survives_its_json_and_chain_state_its_store() -> None:
    codec = small_codec()
    again = TemporalCodec.from_json(codec.to_json())
    assert again.to_json() == codec.to_json()
    state = ChainState((1, -2, 3), (True, False, True), ((0, 2, -1), (1, 0, 0)))
    assert ChainState.from_json(state.to_json(), D) == state
    older = ChainState.from_json('{"units": [1, 2, 3], "mask": [1, 1, 0]}', D)
    assert older.history(D) == ([0, 0, 0], [0, 0, 0])
    for bad in ('{"units": [1, 2], "mask": [1, 1]}', '{"units": [1, 2, 3], "mask": [1, 1, 1], '
                '"moves": [[1], []]}'):  # fmt: skip
        with pytest.raises(ValueError):
            ChainState.from_json(bad, D)


BAD_CODECS = {
    "format": {"format": "other"},
    "kpis": {"kpis": "abc"},
    "L_float": {"L": 3.0},
    "std_zero": {"std": [1.0, 0.0, 1.0]},
    "unit_negative": {"unit": [0.1, -0.25, 0.5]},
    "steps_zero": {"steps": [1, 0, 1]},
    "groups_overlap": {"groups": [[0, 1], [1, 2]]},
    "groups_too_big": {"groups": [[0, 1, 2, 3]]},
    "groups_missing_kpi": {"groups": [[0, 1]]},
    "key_shape": {"keys": [[0, 0]]},
    "table_sum": {"mask_tables": [[1, 1], [16384, 16384]]},
    "move_tables_short": {"move_tables": [[[16384, 16384]], [[16384, 16384]]]},
    "delta_tables_missing": {"delta_tables": [[], [], []]},
    "class_tables_missing": {"class_tables": []},
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


def test_a_codec_of_many_kpis_has_more_words_than_a_memoryless_codebook_and_a_manifest_takes_it():
    D = 60
    kpis = tuple(f"k{j}" for j in range(D))
    groups = tuple(tuple(range(j, j + 3)) for j in range(0, D, 3))
    codec = TemporalCodec(
        kpis=kpis, L=4, clip=6.0, span=6.0, sigma2=1e-3, mean=np.zeros(D), std=np.ones(D),
        log=np.zeros(D, dtype=bool), unit=np.full(D, 0.1), origin=np.zeros(D),
        weight=np.ones(D), steps=np.ones(D, dtype=np.int64), groups=groups,
        keys=np.zeros((2, D), dtype=np.int64), lossless=False, **uniform_tables(D, groups, 2),
    )  # fmt: skip
    assert codec.K == 20 * 16**3 > 65535
    ModelManifest(
        model_sha256="0" * 64, L=4, K=codec.K, kpis=kpis,
        norms=tuple(KpiNorm(k, 0.0, 1.0) for k in kpis), target="k0", horizon=1, window=4,
        opset=0,
    ).validate()  # fmt: skip


@st.composite
def _codecs_and_streams(draw: st.DrawFn) -> tuple[TemporalCodec, np.ndarray, list[bool]]:
    """A codec of 1..6 KPIs in random groups of 1..3, lossy or lossless, and a stream of
    random walks (some values missing, some jumps far past a digit's reach) with keys."""
    D = draw(st.integers(1, 6))
    order = draw(st.permutations(range(D)))
    sizes, left = [], D
    while left:
        sizes.append(draw(st.integers(1, min(3, left))))
        left -= sizes[-1]
    cuts = np.cumsum([0, *sizes])
    groups = tuple(tuple(sorted(order[a:b])) for a, b in itertools.pairwise(cuts))
    lossless = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    codec = random_codec(
        rng, groups, draw(st.integers(1, 4)), draw(st.sampled_from([1e-6, 1e-3, 1e-1])), lossless
    )
    x, keys = random_walks(rng, draw(st.integers(1, 40)), D, draw(st.sampled_from([0.0, 0.2])))
    return codec, x, keys


@settings(max_examples=60, deadline=None)
@given(_codecs_and_streams())
def test_any_codec_decodes_what_its_encoder_kept_and_caps_words_unless_lossless(
    case: tuple[TemporalCodec, np.ndarray, list[bool]],
) -> None:
    codec, x, keys = case
    half = len(x) // 2
    state = None
    for part, flags in ((x[:half], keys[:half]), (x[half:], keys[half:])):
        if not len(part):
            continue
        payload, edge = encode_payload(codec, part, flags, state)
        cloud = decode_payload(codec, payload, flags, state)
        assert np.array_equal(cloud.recon, edge.recon, equal_nan=True)
        assert cloud.codes == edge.codes and cloud.state == edge.state
        assert cloud.escapes == edge.escapes
        if not codec.lossless:
            assert cloud.escapes == 0 and all(len(c) <= codec.L for c in cloud.codes)
        state = cloud.state
