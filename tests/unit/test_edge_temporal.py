"""The edge running a temporal codec: loading and self-test (`edge.temporalencoder`), the
chain of version 3 frames (`edge.chain`, `edge.framer`) and bundles that carry codec.json.

The codec is a small hand-made one (uniform tables), exported by the real temporal export
(`cloud.codec.temporalexport`), so these tests take no training; the integration test
(tests/integration/test_edge_temporal_agent.py) runs a trained one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.fleet.keys import build_bundle, keygen, load_private_key
from sparsetel.edge.chain import FrameChain
from sparsetel.edge.models import load_encoder
from sparsetel.edge.temporalencoder import TemporalEncoder
from sparsetel.edge.updater import ModelStore, Staged, Updater, load_trust_key
from sparsetel.shared.bundle import pack_bundle
from sparsetel.shared.chainframe import decode_chain_frame, frame_version
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import CODEC_FILE, MANIFEST_FILE
from sparsetel.shared.temporalcodec import ChainState
from tests.temporalagent import (
    KPIS,
    D,
    L,
    decode_in_order,
    framer,
    measurements,
    small_codec,
    walk,
    write_run,
)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


def edit_manifest(run: Path, **fields: Any) -> None:
    path = run / MANIFEST_FILE
    data = json.loads(path.read_text())
    for key, value in fields.items():
        if key == "extra":
            data["extra"].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- loading


def test_a_temporal_run_loads_as_a_temporal_encoder_and_passes_its_self_test(run: Path) -> None:
    encoder = load_encoder(run)
    assert isinstance(encoder, TemporalEncoder)
    assert encoder.self_test() == 12
    assert (encoder.L, encoder.K, encoder.D, encoder.kpis) == (L, 16**2 + 16, D, KPIS)
    assert encoder.model_ref == bytes.fromhex(encoder.model_sha256[:16])
    assert encoder.runtime_version.startswith("numpy ")
    encoder.check_schema(KPIS)


def test_a_tampered_codec_json_is_refused_by_its_sha256(run: Path) -> None:
    text = (run / CODEC_FILE).read_text()
    (run / CODEC_FILE).write_text(text.replace('"sigma2":0.001', '"sigma2":0.002'))
    with pytest.raises(ModelMismatchError, match="sha256"):
        load_encoder(run)


def test_a_wrong_probe_payload_fails_the_self_test_saying_where(run: Path) -> None:
    good = ModelManifest.load(run / MANIFEST_FILE).extra["probe_payload"]
    flipped = f"{int(good[:2], 16) ^ 1:02x}" + good[2:]
    edit_manifest(run, extra={"probe_payload": flipped})
    with pytest.raises(ModelMismatchError, match="payload differs from byte 0"):
        load_encoder(run).self_test()
    edit_manifest(run, extra={"probe_payload": good + "00"})
    with pytest.raises(ModelMismatchError, match="differs in length"):
        load_encoder(run).self_test()
    edit_manifest(run, extra={"probe_payload": "xyz"})
    with pytest.raises(ModelMismatchError, match="probe_payload"):
        load_encoder(run).self_test()


def test_a_codec_and_manifest_that_disagree_are_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    edit_manifest(
        run, kpis=["a", "b", "x"], norms=[{"name": k, "mean": 0, "std": 1} for k in "abx"]
    )
    with pytest.raises(ModelMismatchError, match="the codec codes KPIs"):
        load_encoder(run)
    run = write_run(tmp_path / "run2")
    edit_manifest(run, L=2)
    with pytest.raises(ModelMismatchError, match="L=3, the manifest L=2"):
        load_encoder(run)


def test_a_source_with_other_kpis_is_refused_by_the_schema_check(run: Path) -> None:
    encoder = load_encoder(run)
    with pytest.raises(ModelMismatchError, match=r"missing \['c'\]"):
        encoder.check_schema(("a", "b"))
    with pytest.raises(ModelMismatchError, match="another order"):
        encoder.check_schema(("c", "b", "a"))


def test_an_agent_on_a_temporal_codec_never_imports_onnxruntime(run: Path) -> None:
    probe = (
        "import sys; from sparsetel.edge import agent, framer, updater; "
        "from sparsetel.edge.models import load_encoder; "
        f"load_encoder({str(run)!r}).self_test(); "
        "print('onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the chain


def test_the_chain_keys_at_the_start_and_every_key_interval_measurements() -> None:
    chain = FrameChain(key_interval=5)
    state = ChainState((0,) * D, (True,) * D)
    plans = []
    times = list(range(0, 13_000, 1000))
    at = 0
    while at < len(times):
        key, n = chain.split(times[at : at + 3])  # batches of 3 measurements at most
        chain.advance(key, times[at : at + n], state)
        plans.append((at, key, n))
        at += n
    # keys at measurements 0, 5 and 10: a due key ends the frame before it
    assert plans == [(0, True, 3), (3, False, 2), (5, True, 3), (8, False, 2), (10, True, 3)]
    chain.cut()
    assert chain.split([20_000]) == (True, 1) and chain.state is None


def test_the_chain_keys_every_key_interval_seconds_of_measurement_time() -> None:
    chain = FrameChain(key_interval=1000, key_interval_ms=2500)
    state = ChainState((0,) * D, (True,) * D)
    assert chain.split([0, 1000, 2000, 3000]) == (True, 3)
    chain.advance(True, [0, 1000, 2000], state)
    assert chain.split([3000, 4000]) == (True, 2)  # 3 s since the key at 0


def test_chained_frames_decode_in_order_to_exactly_what_the_encoder_kept(
    run: Path, tmp_path: Path
) -> None:
    agent, publisher = framer(run, tmp_path, key_interval=7, batch=4, audit_share=0.2)
    x = walk(30, 5)
    batch = measurements(x)
    for start in range(0, 30, 4):
        agent._send(batch[start : start + 4], publisher)  # type: ignore[arg-type]
    encoder = agent.encoder
    assert isinstance(encoder, TemporalEncoder)
    recon, starts = decode_in_order(encoder.codec, publisher.frames)
    assert starts == [0, 7, 14, 21, 28]
    # the encoder's own copy, coded the same way: one payload per chain
    for a, b in zip(starts, [*starts[1:], 30], strict=True):
        _, edge = encoder.encode_frame(x[a:b], True, None)
        assert np.array_equal(recon[a:b], edge.recon, equal_nan=True)
    assert np.array_equal(np.isnan(recon), np.isnan(x))
    assert agent.stats.measurements == 30 and agent.seq == len(publisher.frames)
    frames = [decode_chain_frame(f) for f in publisher.frames]
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert any(f.audit is not None for f in frames)


def test_a_model_switch_starts_a_new_chain(run: Path, tmp_path: Path) -> None:
    agent, publisher = framer(run, tmp_path, batch=2)
    batch = measurements(walk(6, 1))
    agent._send(batch[:2], publisher)  # type: ignore[arg-type]
    agent._send(batch[2:4], publisher)  # type: ignore[arg-type]
    other = write_run(tmp_path / "other", small_codec(unit=0.05))
    agent.models.stage(Staged(load_encoder(other), "d-1", "deploy"))
    agent._switch(publisher)  # type: ignore[arg-type]
    agent._send(batch[4:], publisher)  # type: ignore[arg-type]
    frames = [decode_chain_frame(f) for f in publisher.frames]
    assert [f.chained for f in frames] == [False, True, False]
    assert frames[2].head is not None and frames[2].head.model_ref == agent.encoder.model_ref
    assert publisher.rebirths == 1


def test_a_frame_that_could_not_be_spooled_breaks_the_chain(run: Path, tmp_path: Path) -> None:
    agent, publisher = framer(run, tmp_path, batch=2)
    batch = measurements(walk(6, 2))
    agent._send(batch[:2], publisher)  # type: ignore[arg-type]
    assert agent.delivery is not None
    agent.delivery.spool.limits = type(agent.delivery.spool.limits)(max_bytes=1)
    agent._send(batch[2:4], publisher)  # type: ignore[arg-type]  # refused: larger than the spool
    agent.delivery.spool.limits = type(agent.delivery.spool.limits)()
    agent._send(batch[4:], publisher)  # type: ignore[arg-type]
    frames = [decode_chain_frame(f) for f in publisher.frames]
    assert [(f.seq, f.chained) for f in frames] == [(0, False), (2, False)]
    assert agent.stats.rejects["spool"] == 2


# --------------------------------------------------------------------------- bundles


class BundleLink:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.reports: list[bytes] = []

    def fetch(self, topic: str, timeout: float) -> bytes | None:
        return self.payload

    def publish_report(self, payload: bytes) -> bool:
        self.reports.append(payload)
        return True


def test_a_temporal_bundle_carries_codec_json_and_installs_as_a_run(
    run: Path, tmp_path: Path
) -> None:
    private, public = keygen(tmp_path / "keys")
    bundle = build_bundle(run, load_private_key(private))
    assert bundle.encoder == (run / CODEC_FILE).read_bytes()
    assert bundle.encoder_sha256 == bundle.manifest.model_sha256
    staged: list[Staged] = []
    current = load_encoder(write_run(tmp_path / "running", small_codec(unit=0.05)))
    updater = Updater(
        group="g", edge="e", kpis=KPIS, store=ModelStore(tmp_path / "state"),
        trust_key=load_trust_key(public), link=BundleLink(pack_bundle(bundle)),
        current=lambda: current, previous=lambda: None, stage=staged.append,
    )  # fmt: skip
    sha = bundle.manifest.model_sha256
    updater.deploy("d-1", sha[:16], sha)
    assert len(staged) == 1 and isinstance(staged[0].encoder, TemporalEncoder)
    installed = staged[0].encoder.model_dir
    assert (installed / CODEC_FILE).read_bytes() == bundle.encoder
    assert not (installed / "encoder.onnx").exists()
    steps = [json.loads(r)["step"] for r in updater.link.reports]  # type: ignore[attr-defined]
    assert steps == ["received", "verified"]


def test_a_frame_too_large_for_the_wire_is_coded_again_in_halves(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sparsetel.shared.chainframe.MAX_FRAME_BYTES", 90)
    agent, publisher = framer(run, tmp_path, batch=8, audit_share=1.0, key_interval=100)
    x = walk(16, 4, missing=0.0)
    batch = measurements(x)
    agent._send(batch[:8], publisher)  # type: ignore[arg-type]
    agent._send(batch[8:], publisher)  # type: ignore[arg-type]
    frames = [decode_chain_frame(f) for f in publisher.frames]
    assert len(frames) > 2 and sum(f.count for f in frames) == 16
    assert all(len(f) <= 90 for f in publisher.frames)
    assert [f.chained for f in frames] == [False] + [True] * (len(frames) - 1)
    assert agent.stats.audits == 16 and agent.stats.rejects == {}
    audits = [a for f in frames for a in (f.audit or ())]
    assert np.allclose(np.array(audits, dtype=np.float64), x.astype(np.float32))
    encoder = agent.encoder
    assert isinstance(encoder, TemporalEncoder)
    recon, _ = decode_in_order(encoder.codec, publisher.frames)
    assert np.array_equal(recon, encoder.encode_frame(x, True, None)[1].recon, equal_nan=True)


def test_a_codec_failing_on_probation_falls_back_and_the_batch_starts_a_new_chain(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, publisher = framer(run, tmp_path, batch=2)
    batch = measurements(walk(6, 3))
    agent._send(batch[:2], publisher)  # type: ignore[arg-type]
    before = agent.encoder
    broken = load_encoder(write_run(tmp_path / "broken", small_codec(unit=0.05)))
    assert isinstance(broken, TemporalEncoder)

    def fail(*args: object) -> object:
        raise ModelMismatchError("the new codec broke")

    monkeypatch.setattr(broken, "encode_frame", fail)
    agent.models.stage(Staged(broken, "d-1", "deploy"))
    agent._switch(publisher)  # type: ignore[arg-type]
    agent._send(batch[2:4], publisher)  # type: ignore[arg-type]  # fails: back to `before`
    agent._send(batch[4:], publisher)  # type: ignore[arg-type]
    assert agent.encoder is before and agent.stats.rollbacks == 1
    frames = [decode_chain_frame(f) for f in publisher.frames]
    assert [(f.seq, f.chained) for f in frames] == [(0, False), (1, False), (2, True)]
    assert frames[1].head is not None and frames[1].head.model_ref == before.model_ref
    assert sum(f.count for f in frames) == 6 and publisher.rebirths == 2


def test_an_onnx_agent_switches_to_a_temporal_codec_and_back(tmp_path: Path) -> None:
    from tests.tinymodel import KPIS as ONNX_KPIS
    from tests.tinymodel import write_tiny_model

    onnx_run = write_tiny_model(tmp_path / "onnx")
    agent, publisher = framer(onnx_run, tmp_path, batch=2)
    batch = measurements(walk(6, 6) * 5)
    agent._send(batch[:2], publisher)  # type: ignore[arg-type]
    temporal = load_encoder(write_run(tmp_path / "temporal", small_codec(kpis=ONNX_KPIS)))
    agent.models.stage(Staged(temporal, "d-1", "deploy"))
    agent._switch(publisher)  # type: ignore[arg-type]
    agent._send(batch[2:4], publisher)  # type: ignore[arg-type]
    assert agent.models.previous is not None
    agent.models.stage(Staged(agent.models.previous, "d-2", "rollback"))
    agent._switch(publisher)  # type: ignore[arg-type]
    agent._send(batch[4:], publisher)  # type: ignore[arg-type]
    assert [frame_version(f) for f in publisher.frames] == [2, 3, 2]
    assert not decode_chain_frame(publisher.frames[1]).chained
    assert agent.seq == 3 and agent.stats.measurements == 6
