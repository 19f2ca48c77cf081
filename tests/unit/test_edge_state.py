"""The edge's state directory: a bdSeq that starts at random, persists, increments and wraps;
its default folder per user (XDG_STATE_HOME), never the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparsetel.edge import statedir as edge_state
from sparsetel.edge.settings import EdgeConfig, default_state_dir
from sparsetel.edge.statedir import BDSEQ_FILE, lock_state_dir, next_bd_seq
from sparsetel.shared.errors import SparsetelError


def test_a_new_state_dir_starts_bd_seq_at_a_random_32_bit_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_state.secrets, "randbits", lambda bits: 3_000_000_000 + bits)
    assert next_bd_seq(tmp_path / "new") == 3_000_000_032
    assert (tmp_path / "new" / BDSEQ_FILE).read_text() == "3000000032\n"


def test_two_new_state_dirs_of_one_edge_do_not_share_a_bd_seq(tmp_path: Path) -> None:
    starts = {next_bd_seq(tmp_path / f"copy-{i}") for i in range(8)}
    assert len(starts) == 8  # a clash is a 1 in 2**32 chance per pair
    assert all(0 <= s < 2**32 for s in starts)


def test_bd_seq_increments_per_run_and_wraps_at_2_to_the_32(tmp_path: Path) -> None:
    (tmp_path / BDSEQ_FILE).write_text("41\n")
    assert [next_bd_seq(tmp_path) for _ in range(2)] == [42, 43]
    (tmp_path / BDSEQ_FILE).write_text(f"{2**32 - 1}\n")
    assert [next_bd_seq(tmp_path) for _ in range(2)] == [0, 1]
    assert not (tmp_path / (BDSEQ_FILE + ".tmp")).exists()


@pytest.mark.parametrize("text", ["", "abc", "-1", str(2**32), "1e3"])
def test_a_bd_seq_file_that_is_not_a_counter_stops_the_agent(tmp_path: Path, text: str) -> None:
    (tmp_path / BDSEQ_FILE).write_text(text)
    with pytest.raises(SparsetelError, match="not a bdSeq counter"):
        next_bd_seq(tmp_path)
    assert (tmp_path / BDSEQ_FILE).read_text() == text


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    with (
        lock_state_dir(tmp_path),
        pytest.raises(SparsetelError, match="another agent"),
        lock_state_dir(tmp_path),
    ):
        pass
    with lock_state_dir(tmp_path):  # released with the first
        pass


def _config(**fields: Any) -> EdgeConfig:
    return EdgeConfig(group="g", edge_id="gnb-7", model=Path("m"), source="-", **fields)


def test_the_default_state_dir_is_under_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    expected = tmp_path / "state" / "sparsetel" / "edges" / "gnb-7"
    assert default_state_dir("gnb-7") == expected
    assert _config().resolved_state_dir == expected
    monkeypatch.chdir(tmp_path / "..")  # the working directory plays no part
    assert _config().resolved_state_dir == expected


@pytest.mark.parametrize("xdg", [None, "", "relative/state"])
def test_without_a_usable_xdg_state_home_the_state_dir_is_under_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)  # a relative one is ignored, as XDG says
    assert _config().resolved_state_dir == tmp_path / ".local/state/sparsetel/edges/gnb-7"


def test_an_explicit_state_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert _config(state_dir=tmp_path / "mine").resolved_state_dir == tmp_path / "mine"


def test_the_default_state_dir_refuses_an_edge_id_that_is_a_path() -> None:
    with pytest.raises(ValueError, match="not a valid id"):
        default_state_dir("..")
