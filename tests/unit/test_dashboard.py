"""The monitor's dashboard (`cloud.monitor.dashboard`, `cloud.monitor.page`,
`cloud.monitor.svgplot`): accuracy against sparsity, drift alerts per KPI, the codebook, and
the page that shows them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sparsetel.cli import main
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.monitor.dashboard import (
    Dashboard,
    DashboardOptions,
    ModelCatalogue,
    _Model,
    load_benchmark,
)
from sparsetel.cloud.monitor.metrics import FleetCollector
from sparsetel.cloud.monitor.page import render_page
from sparsetel.cloud.monitor.svgplot import Series, chart
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.errors import ConfigError
from tests.frames import EDGE, REF, TOPIC, FakeCodec, L, T, audited_frame
from tests.helpers import ANY_TIME, metric_samples

NOW = T + 60_000
# Offline per-KPI MSE: RSRP tiny (its live MSE, 0.005, is drift), SNR large (no drift).
EVALUATION = {
    "nmse": 0.05,
    "target_mae": 50.0,
    "raw_target_mae": 20.0,
    "persistence_target_mae": 80.0,
    "nmse_per_kpi": {"RSRP": 0.5, "SNR": 0.5, "CQI": 0.5},
    "mse_per_kpi": {"RSRP": 0.001, "SNR": 100.0, "CQI": 0.5},
}


class FakeCatalogue(ModelCatalogue):
    def __init__(self, evaluation: dict[str, Any] | None = EVALUATION) -> None:
        super().__init__()
        self.evaluation = evaluation

    def models(self) -> dict[str, _Model]:
        return {REF.hex(): _Model(Path("."), FakeCodec().manifest, self.evaluation)}

    def prototypes(self, ref: str, model: _Model) -> Any:
        return FakeCodec().decode([[k] for k in range(model.manifest.K)])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "dash.db")
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), s, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, audited_frame(0, 0, {})) == "stored"  # codes (1,), (2,), (3,)
    audits = {4: (1.0, 100.0, 3.0), 5: (2.0, 200.0, float("nan"))}
    assert ingest.handle(TOPIC, audited_frame(1, 3, audits)) == "stored"  # (4,), (5,), (6,)
    yield s
    s.close()


def _dashboard(store: Store, min_values: int = 2, **kw: Any) -> Dashboard:
    options = DashboardOptions(
        accuracy_window_s=10**9, drift_window_s=10**9, drift_min_values=min_values
    )
    return Dashboard(store, FakeCatalogue(**kw), options=options)


def test_an_edge_whose_kpi_error_passes_ratio_times_the_offline_error_is_in_drift(
    store: Store,
) -> None:
    data = _dashboard(store).data(NOW)
    recent = {r["kpi"]: r for r in data["kpis"]["recent"]}
    # live RSRP MSE ((0.1 - 0.1)² + (0.1 - 0.2)²) / 2 > 3 x 0.001; SNR 233 < 3 x 100
    assert recent["RSRP"]["mse"] == pytest.approx(0.005)
    assert recent["SNR"]["mse"] == pytest.approx(((0.5 - 10) ** 2 + (0.6 - 20) ** 2) / 2)
    assert recent["RSRP"]["threshold"] == pytest.approx(0.003)
    assert recent["RSRP"]["alert"] and not recent["SNR"]["alert"]
    (alert,) = data["kpis"]["alerts"]
    assert (alert["edge"], alert["kpi"], alert["model_ref"]) == (EDGE, "RSRP", REF.hex())
    # too few audited values to judge: no alert
    assert _dashboard(store, min_values=3).data(NOW)["kpis"]["alerts"] == []
    # no offline reference: no threshold, and the page says which model lacks one
    bare = _dashboard(store, evaluation=None).data(NOW)["kpis"]
    assert bare["alerts"] == [] and bare["unreferenced_models"] == [REF.hex()]
    # the series: one line per edge and KPI, its minute and NMSE
    (line,) = data["kpis"]["series"]["RSRP"]
    assert line["points"] == [[T - T % 60_000, pytest.approx(0.005)]] and line["edge"] == EDGE


def test_drift_is_a_metric_too(store: Store) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, 3600, 10**9, _dashboard(store)))
    got = metric_samples(generate_latest(registry).decode())
    labels = (("edge", EDGE), ("kpi", "RSRP"), ("model", REF.hex()))
    assert got[("sparsetel_kpi_drift_alert", labels)] == 1.0
    assert got[("sparsetel_kpi_drift_threshold_mse", labels)] == pytest.approx(0.003)
    assert got[("sparsetel_live_kpi_mse", labels)] == pytest.approx(0.005)
    snr = (("edge", EDGE), ("kpi", "SNR"), ("model", REF.hex()))
    assert got[("sparsetel_kpi_drift_alert", snr)] == 0.0
    assert got[("sparsetel_kpi_drift_alerts", ())] == 1.0


def test_live_accuracy_sits_beside_the_models_offline_point(store: Store) -> None:
    s = _dashboard(store).data(NOW)["sparsity"]
    (live,) = s["live"]
    (per_edge,) = store.accuracy()
    assert (live["model_ref"], live["L"], live["edges"], live["audits"]) == (REF.hex(), L, 1, 2)
    assert live["nmse"] == pytest.approx(per_edge["nmse"])
    assert live["target_mae"] == pytest.approx(per_edge["target_mae"])
    assert live["offline"]["nmse"] == 0.05 and live["offline"]["raw_target_mae"] == 20.0
    assert s["offline_models"] == [{"model_ref": REF.hex(), "L": L, **live["offline"]}]


def test_the_codebook_shows_each_codes_prototype_in_units_and_its_usage(store: Store) -> None:
    (book,) = _dashboard(store).data(NOW)["codebook"]
    assert (book["measurements"], book["codes_sent"], book["codes_used"]) == (6, 6, 6)
    by_code = {c["code"]: c for c in book["codes"]}
    assert by_code[3]["count"] == 1 and by_code[3]["share"] == pytest.approx(1 / 6)
    assert by_code[3]["prototype"] == [1.0, 3.0, None]  # FakeCodec: [nnz, sum, NaN]
    # prototypes [1, k]: SNR sets the first and last codes apart (|k - 7.5| / 4.6 >= 1)
    assert by_code[0]["reads_as"] == "SNR low" and by_code[15]["reads_as"] == "SNR high"
    assert by_code[8]["reads_as"] == ""
    assert by_code[9]["count"] == 0 and [c["code"] for c in book["codes"][:6]] == [1, 2, 3, 4, 5, 6]


def _benchmark(tmp_path: Path) -> Path:
    rows = [
        {"method": "sdlgm", "setting": "a", "L": 2, "nmse": 0.2, "target_mae": 60.0},
        {"method": "sdlgm", "setting": "b", "L": 2, "nmse": 0.1, "target_mae": 70.0},
        {"method": "sdlgm", "setting": "c", "L": 4, "nmse": 0.05, "target_mae": 55.0},
        {"method": "omp", "setting": "a", "L": 4, "nmse": None, "target_mae": 65.0},
        {"method": "zstd", "setting": "lossless", "L": None, "nmse": 0.0},
    ]
    rows = [{**r, "frame": 50} for r in rows]
    # The same codec at the agent's framing: other bits and errors, not another point.
    rows.append({"method": "sdlgm", "setting": "c", "L": 4, "nmse": 0.01, "frame": 1})
    refs = {"raw_target_mae": 20.0, "persistence_target_mae": 80.0}
    path = tmp_path / "bench" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"rows": rows, "references": refs}), encoding="utf-8")
    return path.parent


def test_a_benchmark_gives_each_method_its_best_setting_per_L(tmp_path: Path) -> None:
    b = load_benchmark(_benchmark(tmp_path))
    assert b["methods"] == {
        "sdlgm": [
            {"L": 2, "nmse": 0.1, "target_mae": 60.0},
            {"L": 4, "nmse": 0.05, "target_mae": 55.0},
        ],
        "omp": [{"L": 4, "target_mae": 65.0}],
    }
    assert (b["raw_target_mae"], b["persistence_target_mae"]) == (20.0, 80.0)
    (tmp_path / "bad.json").write_text('{"rows": 3}', encoding="utf-8")
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(ConfigError, match="not a sparsetel benchmark result"):
            load_benchmark(bad)


def _points(page: str, chart_id: str, css: str) -> list[float]:
    svg = re.search(rf'<svg id="{chart_id}".*?</svg>', page, re.S)
    assert svg, chart_id
    return [float(v) for v in re.findall(rf'class="series {css}"[^>]*data-y="([^"]+)"', svg[0])]


def test_the_page_shows_the_numbers_of_its_data(store: Store, tmp_path: Path) -> None:
    dash = _dashboard(store)
    dash.benchmarks = [load_benchmark(_benchmark(tmp_path))]
    data = dash.data(NOW)
    page = render_page(data, refresh_s=5)
    live = data["sparsity"]["live"][0]
    assert _points(page, "sparsity-mae", "live") == [pytest.approx(live["target_mae"], rel=1e-5)]
    assert _points(page, "sparsity-nmse", "live") == [pytest.approx(live["nmse"], rel=1e-5)]
    assert _points(page, "sparsity-mae", "offline-curve") == [60.0, 55.0, 65.0]
    assert _points(page, "sparsity-mae", "offline-model") == [50.0]
    assert re.search(r'class="series raw_target_mae" data-y="20"', page)
    assert re.search(r'class="series persistence_target_mae" data-y="80"', page)
    assert "id='alert-banner' data-alerts='1'" in page and "e1 (RSRP)" in page
    assert _points(page, "kpi-RSRP", "kpi-line") == [pytest.approx(0.005)]
    assert re.search(r'class="series threshold" data-y="0.003"', page)
    assert "<tr data-edge='e1'>" in page and "id='codebook-" + REF.hex() + "'" in page
    assert '<meta http-equiv="refresh" content="5">' in page
    quiet = render_page(_dashboard(store, evaluation=None).data(NOW), refresh_s=0)
    assert "http-equiv" not in quiet and "id='unreferenced'" in quiet


CALM = {**EVALUATION, "mse_per_kpi": {"RSRP": 1.0, "SNR": 1000.0, "CQI": 1.0}}  # no drift


@pytest.mark.parametrize(
    ("evaluation", "min_values", "now_ms", "why"),
    [
        (None, 2, NOW, "no drift thresholds: no model of these edges has an offline evaluation"),
        (CALM, 3, NOW, "fewer than 3 audited values per KPI in the last 1e+09 s"),
        (CALM, 2, NOW + 10**12, "no audited values arrived in the last 1e+09 s"),
    ],
)
def test_the_banner_says_drift_was_not_judged_instead_of_an_all_clear(
    store: Store, evaluation: dict[str, Any] | None, min_values: int, now_ms: int, why: str
) -> None:
    data = _dashboard(store, min_values, evaluation=evaluation).data(now_ms)
    page = render_page(data, refresh_s=0)
    assert data["kpis"]["judged"] == 0 and data["kpis"]["not_judged"] == why
    assert "id='ok-banner'" not in page and "id='alert-banner'" not in page
    assert f"<div id='unjudged-banner' data-judged='0'>Drift not judged: {why}.</div>" in page


def test_the_banner_is_green_only_when_every_shown_pair_was_checked(store: Store) -> None:
    data = _dashboard(store, evaluation=CALM).data(NOW)
    page = render_page(data, refresh_s=0)
    assert data["kpis"]["judged"] == 2 and data["kpis"]["not_judged"] is None  # RSRP, SNR
    assert "<div id='ok-banner' data-judged='2'>No KPI error drift: 2 edge and KPI pairs " in page
    assert "id='unjudged-banner'" not in page


@pytest.mark.parametrize(("evaluation", "judged"), [(None, 0.0), (CALM, 2.0), (EVALUATION, 2.0)])
def test_the_metrics_say_how_many_pairs_were_judged_for_drift(
    store: Store, evaluation: dict[str, Any] | None, judged: float
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, 3600, 10**9, _dashboard(store, evaluation=evaluation)))
    got = metric_samples(generate_latest(registry).decode())
    assert got[("sparsetel_kpi_drift_judged", ())] == judged


def test_a_chart_places_points_in_order_and_skips_what_it_cannot_draw() -> None:
    svg = chart(
        "c",
        [
            Series("a", [(1, 0.5), (2, 0.1), (4, float("nan")), (8, 0.01)]),
            Series("floor", [(0, 1.0)], "hline", dashed=True),
            Series("neg", [(2, -1.0)], "points"),  # not drawable on a log axis
        ],
        "L",
        "NMSE",
        "log",
        "log",
        x_ticks=(1, 2, 4, 8),
    )
    drawn = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"[^>]*class="series', svg)
    xs, ys = [float(x) for x, _ in drawn], [float(y) for _, y in drawn]
    assert len(xs) == 3 and xs == sorted(xs) and ys == sorted(ys)  # lower NMSE: lower on screen
    assert 'stroke-dasharray="6 4"' in svg and svg.count("<polyline") == 1
    assert 'data-y="-1"' not in svg


def test_bad_monitor_options_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="drift-ratio"):
        DashboardOptions(drift_ratio=0)
    db = str(tmp_path / "m.db")
    assert main(["monitor", "--db", db, "--drift-ratio", "-1"]) == 2
    assert main(["monitor", "--db", db, "--window", "0"]) == 2
    assert main(["monitor", "--db", db, "--benchmark", str(tmp_path / "none")]) == 2
    assert main(["monitor", "--db", db, "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--drift-ratio must be > 0" in err and "not a sparsetel benchmark result" in err
    assert "--window must be > 0" in err
    assert "no manifest.json" in err


def test_a_temporal_codecs_codebook_reads_its_words_as_moves(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from sparsetel.cloud.codec.wordnames import code_names
    from sparsetel.shared.temporalcodec import TemporalCodec
    from tests.quickrun import quick_temporal_run

    run = quick_temporal_run(tmp_path_factory)
    codec = TemporalCodec.from_json((run / "codec.json").read_text(encoding="utf-8"))
    store = open_store(tmp_path / "empty.db")
    try:
        data = Dashboard(store, ModelCatalogue(runs=[run])).data(NOW)
    finally:
        store.close()
    (book,) = data["codebook"]
    names = {c["code"]: c["reads_as"] for c in book["codes"]}
    assert len(names) == codec.K + len(codec.keys)
    assert [names[k] for k in range(len(names))] == list(code_names(codec))
    assert all(c["prototype"] is None and c["count"] == 0 for c in book["codes"])
    html = render_page(
        Dashboard(open_store(tmp_path / "e2.db"), ModelCatalogue(runs=[run])).data(NOW)
    )
    assert code_names(codec)[0] in html
