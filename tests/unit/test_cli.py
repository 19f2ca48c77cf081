"""The `sparsetel` command line: exit codes and errors a user sees, without a broker."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetel.cli import main
from sparsetel.cloud.store.database import open_store


def test_version_and_help_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "sparsetel" in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_usage_error_exits_two() -> None:
    assert main(["train", "--data", "x.csv"]) == 2  # --out missing
    assert main(["no-such-command"]) == 2


def test_train_without_kpis_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--kpis" in capsys.readouterr().err


def test_train_on_a_missing_folder_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(tmp_path / "absent"), "--kpis", "a,b", "--target", "a"]
    assert main([*args, "--out", str(tmp_path / "r")]) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsetel train:") and "absent" in err


def test_edge_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('group = "g"\nedge_id = "e"\nmodel = "m"\nsource = "s"\nbatch = "many"\n')
    assert main(["edge", "--config", str(config)]) == 2
    assert "batch" in capsys.readouterr().err


def test_edge_refuses_a_password_given_as_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        'group = "g"\nedge_id = "e"\nmodel = "m"\nsource = "s"\n'
        '[broker]\nusername = "u"\npassword = "hunter2"\n'
    )
    assert main(["edge", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "SPARSETEL_MQTT_PASSWORD" in err and "hunter2" not in err


def test_edge_with_a_model_folder_that_is_not_there_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["edge", "--model", str(tmp_path / "nope"), "--source", str(tmp_path / "x.csv")]
    assert main([*args, "--group", "g", "--edge-id", "e", "--state-dir", str(tmp_path)]) == 1


def test_the_edge_command_never_imports_torch_or_pandas(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from sparsetel.cli import main\n"
        f"main(['edge', '--model', {str(tmp_path)!r}, '--source', 'x', '--group', 'g',"
        f" '--edge-id', 'e', '--state-dir', {str(tmp_path)!r}])\n"
        "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_spool_or_health_bound_that_is_not_positive_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["edge", "--model", "m", "--source", "s", "--group", "g", "--edge-id", "e"]
    assert main([*args, "--spool-max-bytes", "0"]) == 2
    assert "spool_max_bytes" in capsys.readouterr().err
    assert main([*args, "--spool-max-age", "-5"]) == 2
    assert "spool_max_age_s" in capsys.readouterr().err
    assert main([*args, "--health-interval", "0"]) == 2
    assert "health_interval_s" in capsys.readouterr().err
    assert main([*args, "--connect-timeout", "0"]) == 2
    assert "connect_timeout_s" in capsys.readouterr().err


READERS = (
    ["status"],
    ["query", "--edge", "e1", "--kpi", "RSRP"],
    ["monitor", "--port", "0"],
)


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("prefix", ["", "sqlite:///"])
def test_a_reader_refuses_a_database_that_is_not_there_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], prefix: str
) -> None:
    missing = tmp_path / "typo" / "x.db"
    assert main([command[0], "--db", prefix + str(missing), *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"sparsetel {command[0]}: no database at {missing} (`sparsetel serve --db` creates one)"
    )
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_a_reader_says_in_one_line_when_postgresql_does_not_answer(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2"
    assert main([command[0], "--db", url, *command[1:]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sparsetel {command[0]}: cannot connect to PostgreSQL: "), err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--window", "inf"], "--window must be > 0 and at most 3153600000 s, got inf"),
        (["status", "--window", "nan"], "--window must be > 0"),
        (["status", "--window", "1e300"], "--window must be > 0"),
        (["monitor", "--window", "1e300"], "--window must be > 0"),
        (["monitor", "--accuracy-window", "1e300"], "--accuracy-window must be > 0 and at most"),
        (["monitor", "--drift-window", "inf"], "--drift-window must be > 0 and at most"),
        (["monitor", "--drift-window", "nan"], "--drift-window must be > 0 and at most"),
        (["monitor", "--drift-ratio", "inf"], "--drift-ratio must be > 0"),
        (["monitor", "--drift-min-values", "0"], "drift-min-values and usage-per-edge"),
        (["monitor", "--port", "99999999999999999999"], "--port must be in 0..65535"),
        (["monitor", "--port", "-1"], "--port must be in 0..65535"),
        (["monitor", "--refresh", "nan"], "--refresh must be in 0..86400 s, got nan"),
        (["monitor", "--refresh", "1e300"], "--refresh must be in 0..86400 s"),
    ],
)
def test_a_numeric_flag_of_status_or_monitor_out_of_range_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    db = tmp_path / "fleet.db"
    open_store(db).close()
    assert main([argv[0], "--db", str(db), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
