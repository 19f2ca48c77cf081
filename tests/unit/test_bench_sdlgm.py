"""SDLGM with temporal context (`cloud.codec.temporal`) and its benchmark adapter (`bench.sdlgm`).

Synthetic telemetry that behaves like 1 Hz KPIs: each KPI holds its value and now and then
steps by a multiple of its unit, so most measurements repeat the previous one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sparsetel.cloud.bench.method import FRAME, TrainData, frames
from sparsetel.cloud.bench.sdlgm import (
    FAMILIES,
    RD_L,
    RD_SWEEP,
    SNR_AT_L1,
    SDLGMCodec,
    sdlgm_methods,
    target_snr_db,
)
from sparsetel.cloud.codec.normaliser import Normaliser
from sparsetel.cloud.codec.temporal import (
    TemporalConfig,
    TemporalSDLGM,
    code_frames,
    train_temporal,
)
from sparsetel.shared.manifest import KpiNorm
from sparsetel.shared.temporalpayload import encode_payload

D = 4


def steady_sessions(seed: int, sessions: int = 6, length: int = 300) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sessions):
        moves = rng.random((length, D)) < 0.1
        steps = rng.integers(-2, 3, size=(length, D)) * 0.25
        out.append(np.cumsum(np.where(moves, steps, 0.0), axis=0) + rng.normal(0, 1, D))
    return out


def train_data(seed: int = 0) -> TrainData:
    xs = steady_sessions(seed)
    names = tuple(f"kpi {i}" for i in range(D))
    norm = Normaliser(tuple(KpiNorm(n, 0.0, 1.0) for n in names))  # the identity within ±6
    return TrainData(
        names=names,
        x=tuple(xs),
        mask=tuple(np.ones_like(x, dtype=bool) for x in xs),
        to_raw=norm.inverse,
        from_raw=norm.transform,
        normaliser=norm,
    )


def small_config(**kw: object) -> TemporalConfig:
    base: dict[str, object] = {"D": D, "L": 3, "steps": 60, "batch": 256, "snr_db": 25}
    base.update(kw)
    return TemporalConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained() -> TemporalSDLGM:
    torch.set_num_threads(1)
    data = train_data()
    return train_temporal(small_config(), data.x, data.mask)


def test_config_rejects_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="estimator"):
        TemporalConfig(D=2, estimator="reinforce")


def test_codes_never_open_more_than_L_gates(trained: TemporalSDLGM) -> None:
    xs = steady_sessions(1, sessions=2)
    coded = code_frames(trained, [(x[:FRAME], np.ones_like(x[:FRAME], dtype=bool)) for x in xs])
    for c in coded:
        assert c.gates.shape == (FRAME, trained.cfg.L)
        assert c.gates.sum(1).max() <= trained.cfg.L
        # The key word is one of a key measurement's L nonzeros.
        assert c.gates[0].sum() <= trained.cfg.L - 1


def test_only_the_first_measurement_of_a_frame_has_a_key_word(trained: TemporalSDLGM) -> None:
    x = steady_sessions(9, sessions=1)[0][:FRAME]
    c = code_frames(trained, [(x, np.ones_like(x, dtype=bool))])[0]
    assert c.key_word[0] >= 0 and (c.key_word[1:] == -1).all()
    nearest = ((trained.keys.numpy() - x[0]) ** 2).sum(1).argmin()
    assert c.key_word[0] == nearest


def test_gates_close_on_measurements_that_repeat(trained: TemporalSDLGM) -> None:
    x = np.repeat(steady_sessions(2, sessions=1)[0][:1], FRAME, axis=0)
    c = code_frames(trained, [(x, np.ones_like(x, dtype=bool))])[0]
    assert c.key[0] and not c.key[1:].any()
    # After the key measurement has settled, a steady KPI costs no codes at all.
    assert (c.gates[10:].sum(1) == 0).mean() > 0.8


def test_closed_loop_decoding_tracks_the_stream(trained: TemporalSDLGM) -> None:
    x = steady_sessions(3, sessions=1)[0][:FRAME]
    c = code_frames(trained, [(x, np.ones_like(x, dtype=bool))])[0]
    nmse = ((c.recon - x) ** 2).sum() / (x**2).sum()
    assert nmse < 0.1


def test_missing_entries_do_not_steer_the_codes(trained: TemporalSDLGM) -> None:
    x = steady_sessions(4, sessions=1)[0][:FRAME]
    mask = np.ones_like(x, dtype=bool)
    mask[:, 0] = False
    garbage = x.copy()
    garbage[:, 0] = 1e3
    a = code_frames(trained, [(np.where(mask, x, 0.0), mask)])[0]
    b = code_frames(trained, [(garbage, mask)])[0]
    assert np.array_equal(a.codes[a.gates], b.codes[b.gates])


def test_training_is_deterministic_in_the_seed() -> None:
    data = train_data()
    cfg = small_config(steps=20)
    a = train_temporal(cfg, data.x, data.mask)
    b = train_temporal(cfg, data.x, data.mask)
    assert torch.equal(a.codebook, b.codebook)
    assert torch.equal(a.code_prior, b.code_prior)


def test_the_ablations_differ_as_named() -> None:
    assert FAMILIES["sdlgm-nogates"] == {"gates": False}
    assert target_snr_db(1) == SNR_AT_L1 and target_snr_db(8) == SNR_AT_L1 + 22.5
    assert target_snr_db(4, at_l1=15.0) == 30.0
    methods = sdlgm_methods((1, 2), K=16, quick=True)
    assert {m.family for m in methods} == set(FAMILIES)
    full = sdlgm_methods((1, 2), K=16)
    curve = full[len(FAMILIES) * 2 :]  # the high-rate curve, at RD_L
    assert [m.setting for m in curve] == [f"L={RD_L}, {s:g} dB lattice" for s in RD_SWEEP]
    assert all(m.family == "sdlgm" and m.L == RD_L for m in curve)
    assert all(m.lossy and m.seeded for m in methods)


@pytest.fixture(scope="module")
def fitted() -> SDLGMCodec:
    torch.set_num_threads(1)
    codec = SDLGMCodec("sdlgm", L=2, steps=60, batch=256)
    codec.fit(train_data(), seed=0)
    return codec


def test_frame_bits_are_the_payload_bytes_the_shipped_encoder_writes(fitted: SDLGMCodec) -> None:
    x = steady_sessions(5, sessions=1)[0][:FRAME]
    coded = fitted.code_frame(x, np.ones_like(x, dtype=bool))
    payload, _ = encode_payload(fitted._codec(), x, [i == 0 for i in range(FRAME)], None)
    assert coded.bits == 8 * len(payload) > 0
    # A steady stream costs far less than the fixed-width codes would (L * log2 K each).
    assert coded.bits < FRAME * 2 * 5


def test_reconstruction_is_what_the_cloud_decodes_and_the_edge_expects(
    fitted: SDLGMCodec,
) -> None:
    x = steady_sessions(6, sessions=1)[0][:FRAME]
    mask = np.ones_like(x, dtype=bool)
    _, edge = encode_payload(fitted._codec(), x, [i == 0 for i in range(FRAME)], None)
    coded = fitted.code_frame(x, mask)
    np.testing.assert_array_equal(coded.recon, edge.recon)
    assert np.mean((coded.recon - x) ** 2) < np.mean(x**2) / 10


def test_frames_decode_on_their_own(fitted: SDLGMCodec) -> None:
    x = steady_sessions(7, sessions=1)[0][: 3 * FRAME]
    mask = np.ones_like(x, dtype=bool)
    whole = fitted.code_frames([(x[c], mask[c]) for c in frames(len(x))])
    alone = fitted.code_frame(x[FRAME : 2 * FRAME], mask[FRAME : 2 * FRAME])
    np.testing.assert_array_equal(whole[1].recon, alone.recon)
    assert whole[1].bits == alone.bits


def test_stats_report_sparsity_and_dead_codewords(fitted: SDLGMCodec) -> None:
    x = steady_sessions(8, sessions=1)[0]
    fitted.code_frames([(x[c], np.ones_like(x[c], dtype=bool)) for c in frames(len(x))])
    stats = fitted.stats()
    assert 0 <= stats["mean_nonzeros"] <= stats["max_nonzeros"] <= 2
    assert stats["max_nonzeros"] >= 1  # key measurements count their key word
    assert 0.0 <= stats["codewords_unused_share"] < 1.0


def test_coding_before_fit_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="fit before coding"):
        SDLGMCodec("sdlgm", L=1, steps=1, batch=8).code_frame(
            np.zeros((2, D)), np.ones((2, D), bool)
        )


def test_memoryless_L1_codes_with_key_words_alone() -> None:
    codec = SDLGMCodec("sdlgm-memoryless", L=1, steps=5, batch=64)
    codec.fit(train_data(), seed=0)
    x = steady_sessions(10, sessions=1)[0][:FRAME]
    coded = codec.code_frame(x, np.ones_like(x, dtype=bool))
    assert coded.recon.shape == x.shape
    assert codec.stats()["max_nonzeros"] == 1
    # no temporal context: every measurement is a key measurement, its one code a key word,
    # so no lattice word is ever sent (with context, L = 1 moves by a word after the key)
    assert len(codec.nnz_per_measurement()) == len(x) and not codec._used.any()
    with_context = SDLGMCodec("sdlgm", L=1, steps=5, batch=64)
    with_context.fit(train_data(), seed=0)
    with_context.code_frame(x, np.ones_like(x, dtype=bool))
    assert with_context._used.any()


def test_the_target_kpi_gets_the_run_s_target_weight() -> None:
    data = replace(train_data(), target="kpi 2", target_weight=3.0)
    codec = SDLGMCodec("sdlgm", L=1, steps=1, batch=8)
    codec.fit(data, seed=0)
    assert codec._codec().weight.tolist() == [1.0, 1.0, 3.0, 1.0]
    codec.fit(train_data(), seed=0)  # no target among the KPIs: all alike
    assert codec._codec().weight.tolist() == [1.0] * D


def test_at_frames_of_one_every_measurement_is_a_key_measurement() -> None:
    """The edge agent's default framing at 1 Hz: each frame holds one measurement, so each is
    coded without context, with its key word first."""
    codec = SDLGMCodec("sdlgm", L=2, steps=5, batch=64)
    codec.fit(replace(train_data(), frame=1), seed=0)
    x = steady_sessions(11, sessions=1)[0][:5]
    coded = [codec.code_frame(x[t : t + 1], np.ones((1, D), dtype=bool)) for t in range(5)]
    assert all(c.recon.shape == (1, D) and c.bits > 0 for c in coded)
    assert codec.nnz_per_measurement().min() >= 1  # a key word every time
