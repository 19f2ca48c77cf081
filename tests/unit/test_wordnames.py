"""`code_names`: each temporal code reads as what it does to the KPIs."""

from __future__ import annotations

import re

import pytest

from sparsetel.cloud.codec.wordnames import code_names
from sparsetel.shared.temporalcodec import TemporalCodec
from tests.quickrun import quick_temporal_run


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> TemporalCodec:
    run = quick_temporal_run(tmp_path_factory)
    return TemporalCodec.from_json((run / "codec.json").read_text(encoding="utf-8"))


def test_every_code_has_a_name_and_words_name_their_kpis_and_moves(codec: TemporalCodec) -> None:
    names = code_names(codec)
    assert len(names) == codec.K + len(codec.keys)
    for k in range(0, codec.K, 7):  # a sample of the word ids, every group's included
        _, moves = codec.word_moves(k)
        parts = [p for p in names[k].split(", ") if p != "no move"]
        assert [p.split()[0] for p in parts] == [codec.kpis[j] for j, q in moves.items() if q != 0]
        for part in parts:
            kpi, move = part.split(" ", 1)
            if codec.log[codec.kpis.index(kpi)]:
                assert re.fullmatch(r"(x|moves x>)[0-9.e+-]+", move), part
            else:
                assert re.fullmatch(r"([+-]|moves ±>)[0-9.,e+-]+( dB| km/h)?", move), part
    assert all(n.startswith("key (") for n in names[codec.K :])
    with pytest.raises(IndexError):
        names[len(names)]


def test_a_grid_kpi_word_reads_as_whole_grid_steps(codec: TemporalCodec) -> None:
    names = code_names(codec)
    j = codec.kpis.index("CQI")
    g = next(i for i, members in enumerate(codec.groups) if j in members)
    for q in (-2, -1, 1, 3):
        moves = [q if m == j else 0 for m in codec.groups[g]]
        name = names[codec.word_id(g, moves)]
        size = q * codec.steps[j] * codec.unit[j] * codec.std[j]
        assert name == f"CQI {size:+.3g}"
        assert float(name.split()[1]) == pytest.approx(round(size))
