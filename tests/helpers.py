"""Helpers shared by tests (import them; never import one test module from another)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from sparsetel.cloud.ingest.limits import IngestLimits
from sparsetel.cloud.store.schema import MIGRATIONS
from sparsetel.shared.manifest import KpiNorm, ModelManifest

# For tests whose frames carry fixed synthetic times (1970, November 2023) rather than times
# near their arrival: the default window (8 days back, 1 day ahead) would refuse them.
ANY_TIME = IngestLimits(
    frame_max_age_s=100 * 365 * 86_400.0, frame_max_ahead_s=100 * 365 * 86_400.0
)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class FakeCodec:
    """A Decoder for tests, no model needed: KPIs [nnz, sum of indices], prediction = sum of
    the window's counts. `sha` tells one fake model from another (its model ref)."""

    def __init__(self, L: int, K: int, window: int, sha: str = "5e") -> None:
        self.K = K
        self.manifest = ModelManifest(
            model_sha256=sha * 32, L=L, K=K, kpis=("a", "b"),
            norms=(KpiNorm("a", 0.0, 1.0), KpiNorm("b", 0.0, 1.0)),
            target="a", horizon=1, window=window, opset=17,
        )  # fmt: skip
        self.window, self.horizon = window, 1

    def decode(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([[len(c), sum(c)] for c in codes], dtype=np.float32)

    def counts(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(codes), self.K), np.float32)
        for i, c in enumerate(codes):
            np.add.at(out[i], list(c), 1.0)
        return out

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        return count_windows.sum(axis=(1, 2))

    def predict_sequence(self, counts: np.ndarray) -> np.ndarray:
        windows = sliding_window_view(counts, self.window, axis=0).transpose(0, 2, 1)
        return self.predict(np.ascontiguousarray(windows))


def store_a_frame_before_digests(
    url: str | Path, key: tuple[str, int], model_ref: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store frame (edge, bd_seq, 0) in the database at `url` as the code before schema
    version 7 did (no digest column yet), then put every migration back."""
    import sparsetel.cloud.store.database as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:6])
    with store_module.open_store(url) as old:
        old._execute(
            "INSERT INTO frames (edge, bd_seq, seq, model_ref, n_records, n_bytes, historical, "
            "received_ms) VALUES (?, ?, 0, ?, 2, 42, ?, 1)",
            (*key, model_ref.hex(), False),
        )
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
