"""The edge agent's state directory: the persisted bdSeq counter and the lock that guards it.

The cloud keys frames by (edge, bdSeq, seq), so every run of an agent must have a bdSeq of its
own, even after a crash or a power cut: `next_bd_seq` increments ``state_dir/bdseq`` and
persists it before the agent connects. A fresh state directory starts at a random 32-bit
value, not at 0: a re-imaged device, or a second agent with the same edge id in another
folder, would otherwise repeat the bdSeqs (and every (bdSeq, seq) key) the store already
holds, and the cloud would drop all its frames as duplicates. Two runs collide only when
their bdSeq ranges overlap, a chance of about (runs of both) / 2**32. Two agents sharing one
state directory would hand out the same bdSeq, so `lock_state_dir` holds
``state_dir/agent.lock`` (flock) for the whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ..shared.errors import SparsetelError

__all__ = ["BDSEQ_FILE", "LOCK_FILE", "lock_state_dir", "next_bd_seq"]

BDSEQ_FILE = "bdseq"
LOCK_FILE = "agent.lock"
_U32 = 2**32 - 1


def next_bd_seq(state_dir: Path) -> int:
    """Read ``state_dir/bdseq`` and add one (wrapping at 2**32), or draw a random start when
    the file is absent; persist the value before returning it.

    Written to a temporary file, fsynced and renamed (and the folder fsynced), so a power
    cut leaves the old or the new value, never a torn one. A file that is not a counter
    raises SparsetelError rather than silently starting afresh: a damaged state directory
    is for an operator to look at.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / BDSEQ_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        bd_seq = secrets.randbits(32)  # a fresh identity: never the bdSeqs of an earlier one
    except (OSError, UnicodeDecodeError) as exc:
        raise SparsetelError(f"cannot read {path}: {exc}") from exc
    else:
        if not text.isdigit() or int(text) > _U32:
            raise SparsetelError(f"{path} holds {text[:20]!r}, not a bdSeq counter")
        bd_seq = (int(text) + 1) & _U32
    tmp = path.with_name(BDSEQ_FILE + ".tmp")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{bd_seq}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(state_dir)  # the rename too: a lost one would hand this bdSeq out again
    return bd_seq


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_state_dir(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/agent.lock`` while inside; SparsetelError when another agent holds it.

    Two agents sharing a bdSeq would collide in the cloud. The lock is an flock, so the
    kernel releases it when the process dies, however it dies.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SparsetelError(f"another agent is running with state dir {state_dir}") from exc
        yield
