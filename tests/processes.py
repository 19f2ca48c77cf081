"""Child processes for tests: started, waited for, stopped, and always cleaned up.

    with started(sparsetel("serve", "--db", str(db), "--json")) as serve:
        wait_ready(serve, db.exists, 60, "serve")
        out, err = stop(serve, timeout=30)  # SIGTERM, then its output
    assert serve.returncode == 0 and last_json(out)["duplicates"] == 0

Whatever happens in the block, a process still running at its end is sent `end` (SIGKILL
unless told) and reaped, so a failing test leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
Stream = int | IO[Any] | None


def sparsetel(*args: str) -> list[str]:
    """The command line of ``python -m sparsetel args...`` in this interpreter."""
    return [sys.executable, "-m", "sparsetel", *args]


def python(code: str, *args: str) -> list[str]:
    """The command line of ``python -c code args...`` in this interpreter."""
    return [sys.executable, "-c", code, *args]


@contextlib.contextmanager
def started(
    argv: list[str],
    *,
    stdin: Stream = None,
    stdout: Stream = PIPE,
    stderr: Stream = PIPE,
    text: bool = True,
    end: signal.Signals = signal.SIGKILL,
    end_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[Any]]:
    """`argv` as a child process for the block; on the way out, however the block ends, a
    process still running gets `end` and is reaped (`end_process`)."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, text=text)
    try:
        yield proc
    finally:
        end_process(proc, end, end_timeout)


def end_process(
    proc: subprocess.Popen[Any], sig: signal.Signals = signal.SIGKILL, timeout: float = 10.0
) -> None:
    """If `proc` still runs, send it `sig`; then reap it, its pipes closed. One that has not
    exited `timeout` s after the signal is killed, and `subprocess.TimeoutExpired` raised."""
    if proc.poll() is None:
        proc.send_signal(sig)
    if proc.stdin is not None:  # closed here, as communicate() would; it fails on a closed one
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stdin = None
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def wait_ready(
    proc: subprocess.Popen[Any],
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll `ready` every `interval` s until it holds; fail when `proc` exits first (with
    the end of its stderr when that is a pipe) or when `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            err = proc.communicate()[1] if proc.stderr is not None else ""
            raise AssertionError(f"{what} exited ({proc.returncode}) early: {err[-2000:]!r}")
        assert time.monotonic() < deadline, f"{what} not ready within {timeout} s"
        time.sleep(interval)


def stop(
    proc: subprocess.Popen[Any], timeout: float, sig: signal.Signals = signal.SIGTERM
) -> tuple[Any, Any]:
    """Send `sig` (SIGTERM: a clean stop) and wait at most `timeout` s for the exit: its
    stdout and stderr (None where not piped)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return out, err


def last_json(out: str | bytes) -> dict[str, Any]:
    """The JSON object on the last line of a ``--json`` command's output."""
    text = out.decode() if isinstance(out, bytes) else out
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result
