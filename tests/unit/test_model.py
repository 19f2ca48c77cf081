"""The SDLGM codec, its normalisation, training and the cloud codec, on simulated sessions.

One quick run (simulated 5G sessions, a few hundred steps) is trained per test session and
shared by the model, export and evaluate tests through the same cache folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetel.cloud.codec.decoder import CloudCodec
from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.codec.model import SDLGM, Checkpoint, EdgeEncoder, ModelConfig
from sparsetel.cloud.codec.normaliser import fit_normaliser, make_windows
from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.shared.errors import ConfigError, ModelMismatchError
from tests.quickrun import KPIS, TARGET, quick_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_run(tmp_path_factory)


@pytest.fixture(scope="module")
def codec(run: Path) -> CloudCodec:
    if not (run / "manifest.json").exists():
        export_run(run)
    return CloudCodec.load(run)


def _random_model(D: int = 5, L: int = 4, K: int = 16, gate_bias: float = 0.0) -> SDLGM:
    torch.manual_seed(1)
    return SDLGM(ModelConfig(D=D, L=L, K=K, hidden=32, gate_bias=gate_bias)).eval()


def _rows(n: int, D: int, seed: int = 0) -> np.ndarray:
    """Raw rows with missing values, zeros, huge and infinite readings mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, size=(n, D)).astype(np.float32)
    x[:, 0] = rng.lognormal(3, 2, size=n)
    x[rng.random((n, D)) < 0.15] = np.nan
    x[::17] = np.nan
    x[5::31, 1] = np.inf
    x[7::29, 0] = -1e9
    return x


def test_normaliser_takes_log1p_only_of_non_negative_heavy_tailed_kpis() -> None:
    rng = np.random.default_rng(0)
    x = np.stack(
        [rng.normal(-90, 10, 5000), rng.lognormal(5, 2, 5000), -rng.lognormal(5, 2, 5000)], 1
    )
    norms = fit_normaliser(x, ["RSRP", "DL", "neg"]).norms
    assert [n.log for n in norms] == [False, True, False]
    assert norms[1].lo >= 0 and norms[0].lo == pytest.approx(x[:, 0].min())


def test_normaliser_round_trips_keeps_nan_and_clamps_wild_readings() -> None:
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(0, 1, 1000), rng.lognormal(2, 1.5, 1000)], 1)
    norm = fit_normaliser(x, ["a", "b"])
    probe = np.array([[0.5, 10.0], [np.nan, 3.0], [1e12, 1e30]])
    z = norm.transform(probe)
    assert np.isnan(z[1, 0]) and not np.isnan(z[1, 1])
    assert np.all(np.abs(z[np.isfinite(z)]) <= norm.clip)
    assert np.allclose(norm.inverse(z[:1]), probe[:1])


def test_edge_encoder_gives_at_most_L_ascending_codes_padded_with_K() -> None:
    model = _random_model(gate_bias=0.0)
    x = _rows(2000, 5)
    norm = fit_normaliser(np.nan_to_num(x, nan=0.0, posinf=0.0), [f"k{i}" for i in range(5)])
    with torch.inference_mode():
        codes, nnz = (t.numpy() for t in EdgeEncoder(model, norm)(torch.from_numpy(x)))
    assert codes.shape == (2000, 4) and codes.dtype == np.int64 and nnz.dtype == np.int64
    assert nnz.max() <= 4 and 0 < nnz.mean() < 4  # the gates really open and close here
    used = np.arange(4)[None, :] < nnz[:, None]
    assert np.all(codes[used] < 16) and np.all(codes[~used] == 16)
    assert np.all(np.diff(codes, axis=1) >= 0)


def test_edge_encoder_codes_are_the_training_codes_of_the_same_rows() -> None:
    """The graph's own normalisation and mask give the codes training scored (float64 vs
    float32 aside: rows whose top logits are within 1e-4 are left out)."""
    model = _random_model(gate_bias=0.5)
    x = _rows(1000, 5, seed=3)
    norm = fit_normaliser(x, [f"k{i}" for i in range(5)])
    w = make_windows([x], [x[:, 0]], norm, window=1, horizon=0)
    z, mask = torch.from_numpy(w.z), torch.from_numpy(w.mask)
    with torch.inference_mode():
        codes, _ = EdgeEncoder(model, norm)(torch.from_numpy(x))
        counts = model.hard_counts(z, mask)
        alpha, beta = model.encoder(z, mask)
    top2 = alpha.topk(2, dim=-1).values
    clear = ((top2[..., 0] - top2[..., 1]).min(-1).values > 1e-4) & (
        (beta[..., 1] - beta[..., 0]).abs().min(-1).values > 1e-4
    )
    from_codes = torch.nn.functional.one_hot(codes, 17)[..., :16].sum(1).float()
    assert clear.float().mean() > 0.95
    assert torch.equal(from_codes[clear], counts[clear])


def test_training_reduces_the_loss_and_improves_validation(run: Path) -> None:
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    joint = [r for r in log if r["phase"] == "joint"]
    assert joint[-1]["nll"] < joint[0]["nll"]
    assert min(r["val_nmse"] for r in log) < joint[0]["val_nmse"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_nmse"] == pytest.approx(min(r["val_nmse"] for r in log), abs=0.5)
    assert {"checkpoint.pt", "config.json", "split.json", "train_log.jsonl"} <= {
        p.name for p in run.iterdir()
    }


def test_run_records_split_and_resolved_options(run: Path) -> None:
    split = json.loads((run / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 150 and config["batch"] == 64 and config["seed"] == 0


def test_training_is_reproducible_with_the_same_seed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sessions(data, n_sessions=4, rows=200, seed=2)
    states = []
    for name in ("a", "b"):
        options = TrainOptions(
            codec="memoryless",
            data=data, kpis=KPIS, target=TARGET, out=tmp_path / name, K=16, quick=True,
            steps=20, finetune_steps=5, eval_every=10, seed=7, progress=False,
        )  # fmt: skip
        states.append(Checkpoint.load(train_run(options) / "checkpoint.pt").model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize(
    ("field", "value"), [("L", 0), ("K", 1), ("window", 0), ("horizon", -1), ("steps", 0)]
)
def test_train_options_reject_bad_values_naming_the_key(field: str, value: int) -> None:
    with pytest.raises(ConfigError) as err:
        TrainOptions(
            codec="memoryless", data="d", kpis=KPIS, target=TARGET, out="o", **{field: value}
        )
    assert err.value.key == f"train.{field}"


def test_train_options_from_cli_flags_and_quick_preset() -> None:
    args = argparse.Namespace(
        data=Path("d"), kpis="RSRP, DL bitrate", target="DL bitrate", out=Path("o"),
        horizon=None, L=2, K=64, window=None, seed=3, steps=None, sentinels=None, quick=True,
        codec="memoryless",
    )  # fmt: skip
    opts = TrainOptions.from_cli(args).resolved()
    assert opts.kpis == ("RSRP", "DL bitrate") and (opts.L, opts.K, opts.seed) == (2, 64, 3)
    assert opts.horizon == 1 and opts.window == 8 and opts.steps is not None and opts.quick
    with pytest.raises(ConfigError):
        TrainOptions.from_cli(argparse.Namespace(**{**vars(args), "kpis": None}))


def test_the_temporal_codec_is_the_default_and_refuses_the_memoryless_flags() -> None:
    args = argparse.Namespace(
        data=Path("d"), kpis="RSRP,SNR", target="SNR", out=Path("o"), L=4, snr_db=30.0,
    )  # fmt: skip
    opts = TrainOptions.from_cli(args)
    assert opts.codec == "temporal" and opts.snr_db == 30.0
    for flag, value in (("K", 64), ("objective", "conditional"), ("code_cost", 0.1)):
        with pytest.raises(ConfigError, match="--codec memoryless") as err:
            TrainOptions.from_cli(argparse.Namespace(**{**vars(args), flag: value}))
        assert err.value.key == "train.codec"


def test_lossless_is_a_temporal_mode_without_a_target_snr() -> None:
    args = argparse.Namespace(
        data=Path("d"), kpis="RSRP,SNR", target="SNR", out=Path("o"), L=4, lossless=True,
    )  # fmt: skip
    assert TrainOptions.from_cli(args).lossless
    for change in ({"snr_db": 30.0}, {"codec": "memoryless"}):
        with pytest.raises(ConfigError, match="--lossless") as err:
            TrainOptions.from_cli(argparse.Namespace(**{**vars(args), **change}))
        assert err.value.key == "train.lossless"
    assert not TrainOptions.from_cli(
        argparse.Namespace(**{**vars(args), "lossless": None})
    ).lossless


def test_codec_counts_take_wire_records_and_padded_arrays_alike(codec: CloudCodec) -> None:
    K = codec.K
    records = [(), (3,), (1, 1, 5), (0, 2, 2, K - 1)]
    padded = np.array([[K] * 4, [3, K, K, K], [1, 1, 5, K], [0, 2, 2, K - 1]])
    counts = codec.counts(records)
    assert counts.shape == (4, K) and counts.dtype == np.float32
    assert np.array_equal(counts, codec.counts(padded))
    assert counts[2, 1] == 2 and counts.sum(1).tolist() == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "bad", [[(0, 1, 2, 3, 4)], [(32,)], [(-1,)]], ids=["more_than_L", "index_K", "negative"]
)
def test_codec_rejects_codes_the_model_cannot_have_sent(codec: CloudCodec, bad: list) -> None:
    with pytest.raises(ValueError):
        codec.counts(bad)


def test_codec_decodes_to_raw_units_within_the_training_range(codec: CloudCodec) -> None:
    rng = np.random.default_rng(0)
    codes = np.sort(rng.integers(0, codec.K, size=(500, codec.L)), axis=1)
    x = codec.decode(codes)
    lo = np.array([n.lo for n in codec.manifest.norms])
    hi = np.array([n.hi for n in codec.manifest.norms])
    assert x.shape == (500, len(KPIS)) and x.dtype == np.float64
    assert np.all(np.isfinite(x)) and np.all((x >= lo) & (x <= hi))
    unclipped = codec.checkpoint.normaliser.inverse(codec.decode_normalised(codes))
    inside = (unclipped > lo) & (unclipped < hi)
    assert inside.mean() > 0.5 and np.allclose(x[inside], unclipped[inside])


def test_codec_predicts_one_raw_target_per_window(codec: CloudCodec) -> None:
    windows = np.zeros((3, codec.window, codec.K), dtype=np.float32)
    windows[:, :, 0] = 4
    pred = codec.predict(windows)
    assert pred.shape == (3,) and np.all(np.isfinite(pred)) and np.ptp(pred) == 0
    with pytest.raises(ValueError):
        codec.predict(np.zeros((3, codec.window + 1, codec.K), dtype=np.float32))


def test_predicting_a_sequence_equals_predicting_each_of_its_windows(codec: CloudCodec) -> None:
    rng = np.random.default_rng(3)
    counts = np.zeros((codec.window + 20, codec.K), dtype=np.float32)
    for row in counts:  # sparse codes, as a frame's records give them
        np.add.at(row, rng.integers(0, codec.K, size=rng.integers(0, 5)), 1.0)
    windows = np.lib.stride_tricks.sliding_window_view(counts, codec.window, axis=0)
    expected = codec.predict(np.ascontiguousarray(windows.transpose(0, 2, 1)))
    got = codec.predict_sequence(counts)
    assert got.shape == (21,) and np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert codec.predict_sequence(counts[: codec.window - 1]).shape == (0,)
    with pytest.raises(ValueError):
        codec.predict_sequence(counts[:, :-1])


def test_codec_refuses_a_checkpoint_changed_since_export(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if not (copy / "manifest.json").exists():
        export_run(copy)
    with (copy / "checkpoint.pt").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelMismatchError):
        CloudCodec.load(copy)
