"""`code_names`: each temporal code reads as what it does to the KPIs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparsetel.cloud.codec.wordnames import code_names
from sparsetel.shared.temporalcodec import TemporalCodec
from tests.quickrun import quick_temporal_run


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> TemporalCodec:
    run = quick_temporal_run(tmp_path_factory)
    return TemporalCodec.from_json((run / "codec.json").read_text(encoding="utf-8"))


def test_every_code_has_a_name_and_words_name_their_kpi_and_move(codec: TemporalCodec) -> None:
    names = code_names(codec)
    assert len(names) == codec.K + len(codec.keys)
    for k, name in enumerate(names[: codec.K]):
        kpi = codec.kpis[int(codec.group[k])]
        assert name.startswith(kpi + " ")
        move = name[len(kpi) + 1 :]
        if codec.log[int(codec.group[k])]:
            assert re.fullmatch(r"x[0-9.e+-]+", move), name
        else:
            assert re.fullmatch(r"[+-][0-9.,e+-]+( dB| km/h)?", move), name
    assert all(n.startswith("key (") for n in names[codec.K :])


def test_a_grid_kpi_word_reads_as_whole_grid_steps(codec: TemporalCodec) -> None:
    names = code_names(codec)
    j = codec.kpis.index("CQI")
    for k in np.flatnonzero(codec.group == j):
        steps = int(codec.delta[k]) * codec.unit[j] * codec.std[j]
        assert names[k] == f"CQI {steps:+.3g}"
        assert float(names[k].split()[1]) == pytest.approx(round(steps))
