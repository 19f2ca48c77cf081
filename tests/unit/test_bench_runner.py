"""The benchmark harness with fake codecs on simulated sessions under unusual column names."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cli import main
from sparsetel.cloud.bench import predict, runner, workers
from sparsetel.cloud.bench.dataset import load_bench_data
from sparsetel.cloud.bench.learned import FitCache, TopKSAE
from sparsetel.cloud.bench.method import Coded, TrainData
from sparsetel.cloud.bench.options import BenchOptions, BenchResult
from sparsetel.cloud.bench.runner import run_benchmark, wire_bytes
from sparsetel.cloud.data.simulator import simulate_sessions
from sparsetel.shared.errors import ConfigError, DataError
from sparsetel.shared.wire import Frame, Record, encode_frame, mqtt_publish_overhead

# Another KPI CSV: the simulator's sessions under names with spaces, units and odd case.
RENAME = {"RSRP": "rsrp (dBm)", "SNR": "snr dB", "CQI": "Cqi", "DL_bitrate": "Thrpt DL"}
KPIS = ("rsrp (dBm)", "snr dB", "Cqi", "Thrpt DL")
TARGET = "Thrpt DL"
DESIGN_KEYS = ("method", "L", "bits_per_measurement", "lossy", "nmse", "snr_db", "target_r2")


class Identity:
    """Lossless: sends every value as float32 (32 bits per KPI)."""

    family, setting, L, lossy, seeded = "identity", "float32", None, False, False

    def __init__(self) -> None:
        self.fits = 0

    def fit(self, train: TrainData, seed: int) -> None:
        self.fits += 1

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return Coded(recon=x.copy(), bits=32 * x.size)


class Rounder:
    """Lossy and deterministic: rounds to `step`, costing `bits` bits per measurement."""

    lossy, seeded = True, True

    def __init__(self, step: float, bits: int, L: int | None = None, family: str = "round"):
        self.family, self.step, self.bits, self.L = family, step, bits, L
        self.setting = f"L={L}" if L is not None else f"step={step}"

    def fit(self, train: TrainData, seed: int) -> None:
        assert train.names == KPIS

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return Coded(recon=np.round(x / self.step) * self.step, bits=self.bits * len(x))

    def stats(self) -> dict[str, float]:
        return {"mean_nonzeros": 1.0}


class Noisy(Rounder):
    """Lossy, and its error depends on the seed (so the spread over seeds is not 0)."""

    def fit(self, train: TrainData, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.scale = 0.05 * (1 + seed)

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return Coded(
            recon=x + self.scale * self.rng.standard_normal(x.shape), bits=self.bits * len(x)
        )


@pytest.fixture(autouse=True)
def _short_predictor_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "QUICK_STEPS", 60)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kpis")
    for i, frame in enumerate(simulate_sessions(n_sessions=4, rows=240, seed=3)):
        frame = frame.drop(columns=["state"]).rename(columns=RENAME)
        frame.loc[frame.index[10:14], "snr dB"] = np.nan  # a few missing cells
        frame.to_csv(folder / f"drive {i}.csv", index=False)
    return folder


def _options(data_dir: Path, **kw: object) -> BenchOptions:
    base = {"data": data_dir, "kpis": KPIS, "target": TARGET, "seeds": (0, 1), "quick": True}
    base["jobs"] = 1  # in this process: the tests look at the methods they pass
    return BenchOptions(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rows(data_dir: Path) -> list[dict]:
    methods = [Identity(), Rounder(0.5, 8), Rounder(0.05, 24), Noisy(0, 16, family="noisy")]
    return run_benchmark(_options(data_dir), methods)


def test_rows_have_the_design_keys_and_json_values(rows: list[dict]) -> None:
    assert [r["method"] for r in rows] == ["identity", "round", "round", "noisy"]
    for r in rows:
        assert all(k in r for k in DESIGN_KEYS)
        assert all(f"{k}_std" in r for k in ("nmse", "target_r2", "bits_per_measurement"))
    json.dumps(rows, allow_nan=False)  # no inf or NaN: a lossless SNR is null


def test_lossless_method_has_zero_nmse_and_float32_bits(rows: list[dict]) -> None:
    identity = rows[0]
    assert identity["lossy"] is False and identity["nmse"] == pytest.approx(0.0, abs=1e-12)
    assert identity["snr_db"] is None
    assert identity["bits_per_measurement"] == 32 * len(KPIS)


def test_coarser_rounding_has_higher_nmse(rows: list[dict]) -> None:
    coarse, fine = rows[1], rows[2]
    assert coarse["nmse"] > fine["nmse"] > 0
    assert fine["snr_db"] == pytest.approx(-10 * math.log10(fine["nmse"]), rel=1e-3)
    assert coarse["bits_per_measurement"] == 8 and coarse["mean_nonzeros"] == 1.0


def test_seeds_aggregate_with_zero_spread_when_deterministic(rows: list[dict]) -> None:
    for r in rows[:3]:
        assert r["seeds"] == 2 and r["nmse_std"] == 0.0 and r["bits_per_measurement_std"] == 0
    assert rows[3]["nmse_std"] > 0  # the noisy method depends on its seed


def test_unseeded_method_is_fitted_once(data_dir: Path) -> None:
    identity = Identity()
    run_benchmark(_options(data_dir, seeds=(0, 1, 2)), [identity])
    assert identity.fits == 1


def test_lossless_stream_scores_the_raw_ceiling(data_dir: Path) -> None:
    result = runner.measure(_options(data_dir, seeds=(0,)), [Identity()])
    r2, ceiling = result.rows[0]["target_r2"], result.references["raw_target_r2"]
    assert r2 == pytest.approx(ceiling, abs=1e-6)
    assert result.references["persistence_target_r2"] is not None
    assert result.references["json_wire_bytes_per_measurement"] > 40 * len(KPIS) / 4


def test_worker_processes_give_the_records_one_process_gives(data_dir: Path) -> None:
    methods = [Identity(), Noisy(0, 16, family="noisy"), Rounder(0.5, 8, L=2)]
    options = _options(data_dir, seeds=(0, 1), framings=("50", "agent"))
    alone = runner.measure(options, methods)
    shared = runner.measure(replace(options, jobs=2), methods)
    assert (alone.timing["jobs"], shared.timing["jobs"]) == (1, 2)

    def scores(result: BenchResult) -> list[dict]:
        timed = ("fit_seconds", "code_seconds")
        return [{k: v for k, v in r.items() if k not in timed} for r in result.records]

    # Same records in the same order, the seeded one fitted per seed in whichever worker.
    assert scores(shared) == scores(alone) and len(alone.records) == 2 + 2 + 2
    assert [r["seed"] for r in shared.records if r["method"] == "noisy"] == [0, 1]


def test_methods_sharing_learned_models_are_one_task_per_seed() -> None:
    sae, omp = FitCache(), FitCache()
    shared = [TopKSAE(L, 8, 4, 10, cache=c) for L in (1, 2) for c in (sae, omp)]
    alone = Identity()
    tasks = workers.plan_tasks([(50, [*shared, alone]), (2, [shared[0]])], seeds=(0, 1))
    groups = [([i for i, _ in methods], frame, seeds) for methods, frame, seeds in tasks]
    assert groups == [
        ([0, 2], 50, (0,)), ([0, 2], 50, (1,)),  # one cache, one task per seed
        ([1, 3], 50, (0,)), ([1, 3], 50, (1,)),
        ([4], 50, (0, 1)),  # unseeded: once, scored by both seeds
        ([5], 2, (0,)), ([5], 2, (1,)),
    ]  # fmt: skip


def test_learned_models_are_shared_across_settings_in_one_process(data_dir: Path) -> None:
    cache = FitCache()
    methods = [TopKSAE(1, 8, bits, 20, cache=cache) for bits in (4, 8)]
    runner.measure(_options(data_dir, seeds=(0,)), methods)
    assert len(cache._entries) == 1  # learned once, for both coefficient widths


WORKER = """
import subprocess, sys, time
code = (
    "import time; from sparsetel.cloud.bench.workers import die_with_parent; "
    "die_with_parent(); print('ready', flush=True); time.sleep(120)"
)
worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
worker.stdout.readline()
print(worker.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_ends_when_its_run_is_killed() -> None:
    run = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        worker = int(run.stdout.readline())
        assert _alive(worker)
        run.kill()
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker)
    finally:
        run.kill()


def test_split_is_the_same_whatever_the_seeds(data_dir: Path) -> None:
    a = runner.measure(_options(data_dir, seeds=(0,)), [Identity()]).split
    b = runner.measure(_options(data_dir, seeds=(5, 7)), [Identity()]).split
    assert a == b and len(a["test"]) == 1


def test_wire_bytes_match_an_encoded_frame() -> None:
    # 50 records of 2 codes out of K=128 at L=4: 3 + 2 * 7 bits each
    records = tuple(Record(1000 * i, (3, 9)) for i in range(50))
    frame = encode_frame(Frame(b"12345678", 1, 1, 4, 128, 1000, records))
    frame_b, wire_b = wire_bytes([50 * 17], [50])
    assert frame_b * 50 == len(frame)
    assert wire_b * 50 == len(frame) + mqtt_publish_overhead(runner.TOPIC, len(frame), qos=1)


def test_bench_data_normalises_on_training_rows(data_dir: Path) -> None:
    data = load_bench_data(data_dir, KPIS, TARGET)
    rows = data.train.rows()
    assert np.allclose(rows[np.concatenate(data.train.mask)].mean(), 0, atol=0.2)
    assert data.target_index == 3
    assert data.train.target == TARGET  # a codec may favour the KPI the cloud predicts
    test = data.test[0]
    assert not test.mask[10:14, 1].any() and not test.x[10:14, 1].any()
    raw = data.train.to_raw(data.train.x[0][:5])
    assert np.allclose(data.train.from_raw(raw), data.train.x[0][:5], atol=1e-9)


def test_unknown_family_is_a_config_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SOURCES", ())
    with pytest.raises(ConfigError, match=r"benchmark\.methods"):
        runner.load_methods(_options(data_dir, methods=("nope",)))


def test_the_training_objective_families_run_only_when_named(data_dir: Path) -> None:
    every, _ = runner.load_methods(_options(data_dir))
    assert not any(m.family.startswith("sdlgm-generative") for m in every)
    named, _ = runner.load_methods(_options(data_dir, methods=("sdlgm-adaptive",)))
    assert {m.family for m in named} == {"sdlgm-adaptive"}


def test_missing_column_is_a_data_error(data_dir: Path) -> None:
    with pytest.raises(DataError, match="RSRP"):
        run_benchmark(_options(data_dir, kpis=("RSRP",)), [Identity()])


class FrameWatcher(Identity):
    """Lossless, and records the TrainData it was fitted on and the frame sizes it coded."""

    def fit(self, train: TrainData, seed: int) -> None:
        self.train = train
        self.sizes: list[int] = []

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        self.sizes.append(len(x))
        return super().code_frame(x, mask)


def test_validation_runs_score_the_validation_sessions_and_never_the_test_ones(
    data_dir: Path,
) -> None:
    parts = load_bench_data(data_dir, KPIS, TARGET).parts
    validation = load_bench_data(data_dir, KPIS, TARGET, on="validation")
    names = [s.name for s in validation.test]
    assert names == [s.name for s in parts[1].sessions]
    assert not set(names) & {s.name for s in parts[2].sessions}
    windows = predict.test_windows(validation, window=8, horizon=1)
    assert np.array_equal(windows.y, parts[1].sessions[0].target, equal_nan=True)
    result = runner.measure(_options(data_dir, seeds=(0,), on="validation"), [Identity()])
    assert result.rows[0]["target_r2"] == pytest.approx(result.references["raw_target_r2"])


def test_methods_get_the_run_s_framing_and_target_weight(data_dir: Path) -> None:
    watcher = FrameWatcher()
    options = _options(data_dir, seeds=(0,), framings=("7",), target_weight=2.5)
    row = runner.measure(options, [watcher]).rows[0]
    assert watcher.train.frame == 7 and row["frame"] == 7
    assert watcher.train.weights().tolist() == [1.0, 1.0, 1.0, 2.5]  # the target, last
    assert max(watcher.sizes) == 7 and set(watcher.sizes) <= set(range(1, 8))


def test_the_agent_framing_at_1_hz_is_two_measurements_per_frame(data_dir: Path) -> None:
    data = load_bench_data(data_dir, KPIS, TARGET)
    assert runner.agent_frame(data) == 2  # the simulator's 1 Hz rows, the agent's 1 s delay
    result = runner.measure(_options(data_dir, seeds=(0,), framings=("agent",)), [Identity()])
    assert result.rows[0]["frame"] == 2 and result.references["agent_frame"] == 2


@pytest.mark.parametrize(
    "field",
    [
        {"on": "train"},
        {"framings": ("0",)},
        {"framings": ("fifty",)},
        {"target_weight": 0.0},
        {"jobs": -1},
    ],
)
def test_bad_run_settings_are_config_errors(data_dir: Path, field: dict) -> None:
    with pytest.raises(ConfigError):
        _options(data_dir, **field)


@pytest.mark.parametrize("field", [{"Ls": (0, 2)}, {"K": 1}, {"seeds": ()}, {"window": 0}])
def test_bad_options_are_config_errors(data_dir: Path, field: dict) -> None:
    with pytest.raises(ConfigError):
        _options(data_dir, **field)


def test_cli_rejects_a_bad_L_with_exit_two(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["benchmark", "--data", str(data_dir), "--kpis", ",".join(KPIS), "--target", TARGET]
    assert main([*args, "--L", "0,x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsetel benchmark:") and "L" in err and "\n" not in err


def test_cli_runs_and_writes_files(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fakes = [
        Identity(),
        Rounder(0.5, 8, L=1, family="coarse"),
        Rounder(0.1, 16, L=2, family="coarse"),
    ]
    monkeypatch.setattr(runner, "load_methods", lambda options: (list(fakes), []))
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(data_dir), "--kpis", ",".join(KPIS), "--target", TARGET]
    code = main([*args, "--L", "1,2", "--seeds", "0", "--quick", "--out", str(out), "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["identity", "coarse", "coarse"]
    for name in ("results.json", "results.md", "rd.png", "r2_vs_L.png", "r2_vs_bits.png"):
        assert (out / name).stat().st_size > 0


def test_cli_on_a_missing_folder_exits_one_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "load_methods", lambda options: ([Identity()], []))
    args = ["benchmark", "--data", str(tmp_path / "absent"), "--kpis", "a,b", "--target", "a"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsetel benchmark:") and "absent" in err and "\n" not in err
