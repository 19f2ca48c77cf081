"""Coding a version 3 frame while its measurements come (`edge.ahead`, `PayloadEncoder`):
the same bytes as coding the frame at once, and never a frame of stale state."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparsetel.edge.framer import Framer
from sparsetel.edge.models import load_encoder
from sparsetel.edge.source import Measurement
from sparsetel.edge.temporalencoder import TemporalEncoder
from sparsetel.edge.updater import Staged
from sparsetel.shared.chainframe import decode_chain_frame
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.temporalcodec import ChainState
from sparsetel.shared.temporalpayload import PayloadEncoder, encode_payload
from tests.codeccases import random_codec, random_codec_case
from tests.temporalagent import (
    FakePublisher,
    decode_in_order,
    framer,
    measurements,
    small_codec,
    walk,
    write_run,
)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """The small codec's run, its KPIs' training range -10..10 (the export says none)."""
    run = write_run(tmp_path / "run")
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    for norm in manifest["norms"]:
        norm["lo"], norm["hi"] = -10.0, 10.0
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize("seed", range(30))
def test_a_payload_coded_one_measurement_at_a_time_is_the_frames_coded_at_once(seed: int) -> None:
    """`add` normalises a measurement alone, in Python (`normalise_row`), the frame's coder
    all its rows with numpy: the same floats, so the same bytes; with log-scaled KPIs (every
    other case: log1p stays numpy's) and values beyond any range (clipped) too."""
    codec, x, keys = random_codec_case(seed)
    rng = np.random.default_rng(seed)
    if seed % 2:
        codec = replace(codec, log=rng.random(codec.D) < 0.7)
        x = np.where(np.isnan(x), x, np.exp(x))  # log-scaled KPIs are rates, mostly positive
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -np.inf
    want, decoded = encode_payload(codec, x, keys, None)
    coder = PayloadEncoder(codec, None)
    for row, key in zip(x, keys, strict=True):
        coder.add(row, key)
    have, ours = coder.finish()
    assert have == want
    assert ours.codes == decoded.codes and ours.state == decoded.state
    assert ours.escapes == decoded.escapes
    assert np.array_equal(ours.recon, decoded.recon, equal_nan=True)
    with pytest.raises(ValueError, match="finished"):
        coder.add(x[0], True)


def test_a_measurement_normalised_alone_is_its_row_normalised_with_numpy_bit_for_bit() -> None:
    """The same floats exactly, log1p included (math.log1p differs from numpy's in the last
    bit for a few percent of values here, which a payload rarely shows: compared directly)."""
    rng = np.random.default_rng(0)
    codec = random_codec(rng, ((0, 1, 2), (3, 4)), 3, 1e-3, lossless=False)
    codec = replace(codec, log=np.array([True, False, True, True, False]),
                    mean=rng.normal(0, 3, 5), std=rng.uniform(0.1, 5, 5))  # fmt: skip
    x = rng.normal(0, 1, (20_000, 5)) * 10.0 ** rng.integers(-3, 7, (20_000, 5))
    for value, share in ((np.nan, 0.05), (np.inf, 0.01), (-np.inf, 0.01)):
        x[rng.random(x.shape) < share] = value
    want = codec.normalise(x)
    seen = np.isfinite(want)
    alone = [codec.normalise_row(r) for r in x.tolist()]
    assert np.array_equal(np.array([m for _, m in alone]), seen)
    assert np.array_equal(np.array([r for r, _ in alone]), np.where(seen, want, 0.0))
    with pytest.raises(ValueError, match="expected 5 KPIs"):
        codec.normalise_row([1.0, 2.0])


def test_a_payload_without_a_state_must_start_with_a_key() -> None:
    codec, x, _ = random_codec_case(1)
    with pytest.raises(ValueError, match="starts with a key"):
        PayloadEncoder(codec, None).add(x[0], False)


def _stream(agent: Framer, publisher: FakePublisher, batches: list[list[Measurement]],
            ahead: bool) -> list[bytes]:  # fmt: skip
    for batch in batches:
        if ahead:
            for m in batch:
                agent._arrived(m)
        agent._send(batch, publisher)  # type: ignore[arg-type]
    return publisher.frames


def test_frames_coded_as_their_measurements_come_are_the_frames_coded_when_due(
    run: Path, tmp_path: Path
) -> None:
    x = walk(40, 7)
    x[9, 1] = 1e6  # out of the model's range: left out by both
    batch = measurements(x)
    batches = [batch[i : i + 5] for i in range(0, 40, 5)]
    coded = {}
    for ahead in (False, True):
        agent, publisher = framer(run, tmp_path / str(ahead), key_interval=12, batch=5)
        coded[ahead] = _stream(agent, publisher, batches, ahead)
        if ahead:  # a key due inside a batch ends the frame: the rest is coded when due
            assert agent.ahead.used == 8 and agent.ahead.missed == len(coded[True]) - 8 > 0
            assert agent.stats.coded_ahead == 8
            assert agent.stats.rejects["out_of_range"] == 1
    assert coded[True] == coded[False]
    encoder = agent.encoder
    assert isinstance(encoder, TemporalEncoder)
    recon, starts = decode_in_order(encoder.codec, coded[True])
    assert starts == [0, 12, 24, 36] and len(recon) == 39


def test_the_measurements_drained_at_a_stop_are_coded_when_the_frame_leaves(
    run: Path, tmp_path: Path
) -> None:
    batch = measurements(walk(6, 2))
    agent, publisher = framer(run, tmp_path / "a", batch=6)
    for m in batch[:3]:
        agent._arrived(m)
    agent._send(batch, publisher)  # type: ignore[arg-type]
    other, plain = framer(run, tmp_path / "b", batch=6)
    other._send(batch, plain)  # type: ignore[arg-type]
    assert agent.ahead.used == 1 and publisher.frames == plain.frames


def test_what_was_coded_from_a_state_that_changed_since_is_never_sent(
    run: Path, tmp_path: Path
) -> None:
    batch = measurements(walk(16, 3))
    agent, publisher = framer(run, tmp_path, batch=4)
    _stream(agent, publisher, [batch[:4]], ahead=True)
    for m in batch[12:]:
        agent._arrived(m)  # coded continuing the chain as it stands...
    link = agent.chain.link
    assert link is not None
    moved = ChainState(tuple(u + 3 for u in link.state.units), link.state.mask, link.state.moves)
    agent.chain.link = replace(link, state=moved)  # ...which another frame then moves on
    agent._send(batch[12:], publisher)  # type: ignore[arg-type]
    encoder = agent.encoder
    assert isinstance(encoder, TemporalEncoder)
    want, _ = encoder.encode_frame(walk(16, 3)[12:], False, moved)
    assert decode_chain_frame(publisher.frames[-1]).payload == want
    agent.chain.link = link
    for m in batch[4:8]:
        agent._arrived(m)  # coded continuing the chain...
    agent.chain.cut()  # ...which a dropped frame then breaks: the frame must start a new one
    agent._send(batch[4:8], publisher)  # type: ignore[arg-type]
    for m in batch[8:12]:
        agent._arrived(m)  # coded by the model that is about to be replaced
    other = write_run(tmp_path / "other", small_codec(unit=0.05))
    agent.models.stage(Staged(load_encoder(other), "d-1", "deploy"))
    agent._switch(publisher)  # type: ignore[arg-type]
    agent._send(batch[8:12], publisher)  # type: ignore[arg-type]
    assert (agent.ahead.used, agent.ahead.missed) == (1, 3)
    encoder = agent.encoder
    assert isinstance(encoder, TemporalEncoder)
    recon, starts = decode_in_order(encoder.codec, publisher.frames[3:])
    assert starts == [0]
    assert np.array_equal(recon, encoder.encode_frame(walk(16, 3)[8:12], True, None)[1].recon,
                          equal_nan=True)  # fmt: skip


def test_a_step_that_fails_leaves_the_frame_to_the_loop(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong coding ahead (here: any step at all), the frame loop codes the
    frame itself: the same frames, none lost."""

    class Failing:
        def __init__(self, *args: object) -> None:
            pass

        def add(self, *args: object) -> None:
            raise RuntimeError("a step failed")

    batch = measurements(walk(8, 6))
    agent, publisher = framer(run, tmp_path / "a", batch=4)
    plain = _stream(*framer(run, tmp_path / "b", batch=4), [batch[:4], batch[4:]], ahead=False)
    monkeypatch.setattr("sparsetel.edge.ahead.PayloadEncoder", Failing)
    assert _stream(agent, publisher, [batch[:4], batch[4:]], ahead=True) == plain
    assert (agent.ahead.used, agent.ahead.missed, agent.stats.coded_ahead) == (0, 2, 0)
