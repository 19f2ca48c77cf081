"""`train --codec temporal`, `export` and `evaluate` on simulated sessions: the path that ships.

One small run (`tests.quickrun.quick_temporal_run`) is trained and exported once; these tests
read what it left: the codec, its manifest and self-test payload, the predictors, and what
`evaluate` measures through real version 3 frame bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.cloud.codec.shipping import code_stream
from sparsetel.cloud.codec.temporalexport import probe_payload
from sparsetel.cloud.data.datasets import load_dataset
from sparsetel.cloud.training.changepredictor import ChangePredictor
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.cloud.training.temporalrun import target_column
from sparsetel.shared.chainframe import (
    ChainHead,
    chain_frame,
    decode_chain_frame,
    encode_chain_frame,
)
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import read_evaluation
from sparsetel.shared.temporalcodec import TemporalCodec
from tests.quickrun import KPIS, TARGET, quick_temporal_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_temporal_run(tmp_path_factory)


@pytest.fixture(scope="module")
def data(run: Path) -> Path:
    return run.parent / "data"


@pytest.fixture(scope="module")
def codec(run: Path) -> TemporalCodec:
    return TemporalCodec.from_json((run / "codec.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def result(run: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    copy = tmp_path_factory.mktemp("temporal-eval") / "run"
    shutil.copytree(run, copy)
    return evaluate_run(copy, data)


def test_train_writes_the_codec_its_predictors_and_its_probes(run: Path, codec: TemporalCodec):
    assert codec.kpis == KPIS and codec.L == 4
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["codec"] == "temporal" and len(summary["probe_inputs"]) == 16
    # --snr-db left out: L = 4's 25 dB, the lattice step calibrated to it on validation
    assert abs(summary["validation_snr_db"] - 25.0) < 2.0 and summary["lossless"] is False
    for name in ("decoded", "raw"):
        assert (run / "predictor" / name / "change_predictor.json").exists()
        assert summary["predictors"][name]["learner"] in ("linear", "mlp", "trees")


def test_manifest_hashes_the_codec_and_carries_the_self_test_payload(
    run: Path, codec: TemporalCodec
) -> None:
    manifest = ModelManifest.load(run / "manifest.json")
    assert manifest.model_sha256 == hashlib.sha256((run / "codec.json").read_bytes()).hexdigest()
    assert manifest.extra["codec"] == "temporal" and manifest.extra["codec_file"] == "codec.json"
    probes = np.array(manifest.probe_inputs, dtype=np.float64)
    payload = bytes.fromhex(manifest.extra["probe_payload"])
    assert payload == probe_payload(codec, probes)
    back = decode_payload(codec, payload, [i == 0 for i in range(len(probes))], None)
    z = codec.normalise(probes)
    assert np.array_equal(np.isfinite(back.recon), np.isfinite(z))


def test_export_is_byte_identical_when_run_again(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "manifest.json").unlink()
    export_run(copy)
    first = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    again = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    first.pop("created"), again.pop("created")
    assert first == again


def test_a_tampered_codec_is_refused_as_a_model_mismatch(run: Path, tmp_path: Path) -> None:
    text = (run / "codec.json").read_text(encoding="utf-8")
    obj = json.loads(text)
    obj["L"] = "four"
    with pytest.raises(ModelMismatchError, match="bad temporal codec"):
        TemporalCodec.from_json(json.dumps(obj))


def test_chained_frames_decode_from_their_bytes_to_the_encoders_copy(
    codec: TemporalCodec, data: Path
) -> None:
    x = load_dataset(data / "session_000.csv", KPIS, TARGET).sessions[0].kpis[:120].copy()
    x[5:9, 2] = np.nan  # SNR missing for a while: the mask is coded
    stream = code_stream(codec, x, frame=2, key_interval=60)
    assert [i for i, k in enumerate(sum(stream.keys, ())) if k] == [0, 60]
    state, t, recon = None, 0, []
    for seq, (payload, keys) in enumerate(zip(stream.payloads, stream.keys, strict=True)):
        head = ChainHead(bytes(8), 1000 * t, 1000, codec.L, codec.K) if keys[0] else None
        key_at = tuple(i for i, k in enumerate(keys) if k)
        times = [1000 * (t + i) for i in range(len(keys))]
        frame = decode_chain_frame(
            encode_chain_frame(
                chain_frame(1, seq, times, 1000, key_at, payload, head, times[0] - 1000)
            )
        )
        assert frame.chained == (not keys[0])
        decoded = decode_payload(codec, frame.payload, list(keys), state if frame.chained else None)
        state, t = decoded.state, t + len(keys)
        recon.append(decoded.recon)
    assert np.array_equal(np.concatenate(recon), stream.recon, equal_nan=True)
    assert np.all(np.isnan(stream.recon[5:9, 2])) and np.isfinite(stream.recon[9, 2])
    assert max(len(c) for c in stream.codes) <= codec.L


def test_evaluate_measures_the_shipped_path(result: dict[str, Any], codec: TemporalCodec):
    json.dumps(result, allow_nan=False)
    assert result["codec"] == "temporal" and result["edge_cloud_agree"] is True
    assert 0 < result["mean_nonzeros"] <= result["max_nonzeros"] <= codec.L
    assert 0 < result["bits_per_measurement"] <= 8 * result["frame_bytes_per_measurement"]
    assert result["frame_bytes_per_measurement"] < result["wire_bytes_per_measurement"]
    assert result["snr_db"] == pytest.approx(-10 * math.log10(result["nmse"]))
    assert set(result["snr_db_per_kpi"]) == set(result["max_abs_error_per_kpi"]) == set(KPIS)
    agent = result["agent"]
    assert agent["records_per_frame"] == 2 and agent["key_interval"] == 60
    parts = ("frames", "heartbeats", "receipts")
    per_day = [agent[f"link_bytes_per_day_{p}"] for p in parts]
    assert per_day[0] == pytest.approx(86_400 * agent["wire_bytes_per_measurement"])
    assert agent["link_bytes_per_day"] == pytest.approx(sum(per_day))
    # a beat of a few hundred bytes every 30 s; a receipt of a few dozen per frame (2 s)
    assert 2880 * 200 < per_day[1] < 2880 * 1000 and 43_200 * 40 < per_day[2] < 43_200 * 150
    for key in ("target_mae", "raw_target_mae", "persistence_target_mae"):
        assert result[key] > 0
    assert 0 < result["target_reconstruction_mae"] < result["target_change_mae"]


def test_evaluate_sizes_heartbeats_at_the_agents_default_interval() -> None:
    from sparsetel.cloud.training.temporaleval import HEALTH_INTERVAL_S
    from sparsetel.edge.settings import EdgeConfig

    assert EdgeConfig.__dataclass_fields__["health_interval_s"].default == HEALTH_INTERVAL_S


def test_evaluate_saves_its_result_for_the_monitor(result: dict[str, Any], tmp_path_factory):
    folders = list(tmp_path_factory.getbasetemp().glob("temporal-eval*/run"))
    saved = read_evaluation(folders[0])
    assert saved is not None and saved["bits_per_measurement"] == result["bits_per_measurement"]


def test_evaluate_tracks_jumps_and_reports_them_per_kpi(result: dict[str, Any]) -> None:
    tracked = [v for v in result["jump_tracking"].values() if v["jumps"]]
    assert tracked and all(0 <= v["median"] <= v["max"] <= 60 for v in tracked)


def test_the_saved_predictor_predicts_what_it_predicted_before_saving(
    run: Path, codec: TemporalCodec, tmp_path: Path
) -> None:
    _, to_raw = target_column(codec, TARGET)
    predictor = ChangePredictor.load(run / "predictor" / "decoded", to_raw)
    z = codec.normalise(np.random.default_rng(0).normal(0, 5, (40, codec.D)) + codec.mean)
    before = predictor.predict(z)
    predictor.save(tmp_path / "p")
    again = ChangePredictor.load(tmp_path / "p", to_raw).predict(z)
    assert np.array_equal(before, again, equal_nan=True)
    assert np.all(np.isnan(before[: predictor.window - 1])) and np.all(np.isfinite(before[8:]))
    with pytest.raises(ValueError, match="to_raw_target"):
        ChangePredictor.load(run / "predictor" / "decoded", None)
    with pytest.raises(ValueError, match="differs"):
        ChangePredictor.load(run / "predictor" / "decoded", lambda v: 2 * to_raw(v))


def test_grid_kpis_decode_onto_their_grid_in_raw_units(codec: TemporalCodec, data: Path) -> None:
    decimals = dict(zip(codec.kpis, codec.raw_decimals, strict=True))
    assert decimals["RSRP"] == decimals["CQI"] == 0 and decimals["SNR"] == 1
    assert decimals["DL_bitrate"] == -1  # log-scaled: no grid
    x = load_dataset(data / "session_000.csv", KPIS, TARGET).sessions[0].kpis[:200]
    raw = codec.to_raw(code_stream(codec, x, frame=50).recon)
    j = codec.kpis.index("RSRP")
    rsrp = raw[:, j][np.isfinite(raw[:, j])]
    assert np.array_equal(rsrp, np.round(rsrp)) and np.allclose(
        rsrp,
        codec.denormalise(code_stream(codec, x, frame=50).recon)[:, j][np.isfinite(raw[:, j])],
        atol=1e-4,
    )
    again = TemporalCodec.from_json(codec.to_json())
    assert again.raw_decimals == codec.raw_decimals
    older = json.loads(codec.to_json())
    del older["raw_decimals"]  # a codec.json written before raw_decimals: no rounding
    assert TemporalCodec.from_json(json.dumps(older)).raw_decimals == ()


def test_lossless_mode_brings_every_grid_kpi_back_exactly_and_counts_escapes(
    data: Path, tmp_path: Path
) -> None:
    from sparsetel.cloud.training.train import TrainOptions, train_run

    run = tmp_path / "lossless"
    options = TrainOptions(
        data=data, kpis=KPIS, target=TARGET, out=run, L=2, quick=True, codec="temporal",
        steps=20, seed=0, progress=False, lossless=True,
    )  # fmt: skip
    train_run(options)
    export_run(run)
    codec = TemporalCodec.from_json((run / "codec.json").read_text(encoding="utf-8"))
    assert codec.lossless and not codec.log.any() and int(codec.steps.max()) == 1
    result = evaluate_run(run, data)
    assert result["lossless"] is True and result["edge_cloud_agree"] is True
    assert result["escape_words"] > 0 and result["max_nonzeros"] > codec.L  # past L: escapes
    gridded = [k for k, d in zip(codec.kpis, codec.raw_decimals, strict=True) if d >= 0]
    # exact at the KPI's decimals: only the float32 the CSV was read into differs (SNR 10.7)
    assert gridded and all(result["max_abs_error_per_kpi"][k] < 1e-5 for k in gridded)
