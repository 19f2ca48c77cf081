"""The models a decoder knows, found by the 8-byte model ref every frame carries.

A frame names its model by the first 8 bytes of the encoder's sha256 (`ModelManifest.
model_ref`); the registry maps that ref to a decoder able to turn the frame's codes back into
KPIs and predictions. `Decoder` is what the service needs from one: `cloud.codec.CloudCodec`
provides it, and tests can pass small fakes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest

__all__ = ["Decoder", "ModelRegistry"]

log = logging.getLogger(__name__)


class Decoder(Protocol):
    """What the decoder service uses of a model (`cloud.codec.CloudCodec` is one)."""

    @property
    def manifest(self) -> ModelManifest:
        """L, K, the KPIs (D of them) and `model_ref` of the encoder this decoder pairs with."""
        ...

    @property
    def window(self) -> int:
        """W: how many consecutive measurements the predictor reads."""
        ...

    @property
    def horizon(self) -> int:
        """h: the predictor's target is the measurement h periods after the window's last."""
        ...

    def decode(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        """KPIs in raw units (shape: [N, D]) of N codes (each at most L indices < K)."""
        ...

    def counts(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        """Codeword counts, float32 (shape: [N, K]), the predictor's input rows."""
        ...

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        """Target in raw units at t+h (shape: [N]) from count windows (shape: [N, W, K])."""
        ...


class ModelRegistry:
    """model_ref (8 bytes) -> Decoder. Safe to read from one thread while another adds."""

    def __init__(self, decoders: Iterable[Decoder] = ()) -> None:
        self._by_ref: dict[bytes, Decoder] = {}
        self._lock = threading.Lock()
        for decoder in decoders:
            self.add(decoder)

    def add(self, decoder: Decoder) -> bytes:
        """Register `decoder` under its manifest's model_ref and return that ref.

        Adding the same model again replaces it; a different model whose sha256 starts with
        the same 8 bytes (a ref collision) raises ModelMismatchError.
        """
        manifest = decoder.manifest
        ref: bytes = manifest.model_ref
        with self._lock:
            known = self._by_ref.get(ref)
            if known is not None and known.manifest.model_sha256 != manifest.model_sha256:
                raise ModelMismatchError(
                    f"model ref {ref.hex()} of {manifest.model_sha256} is already taken by "
                    f"{known.manifest.model_sha256}"
                )
            self._by_ref[ref] = decoder
        log.info(
            "model %s registered: L=%s K=%s D=%s window=%s horizon=%s",
            ref.hex(),
            manifest.L,
            manifest.K,
            manifest.D,
            decoder.window,
            decoder.horizon,
        )
        return ref

    def add_run(self, run_dir: str | Path) -> bytes:
        """Load an exported run directory with `CloudCodec.load` and register it."""
        from .codec import CloudCodec  # torch lives behind the codec; load it only when used

        codec: Decoder = CloudCodec.load(Path(run_dir))
        return self.add(codec)

    def get(self, model_ref: bytes) -> Decoder | None:
        """The decoder for `model_ref`, or None when no registered model has it."""
        return self._by_ref.get(bytes(model_ref))

    def refs(self) -> list[bytes]:
        """The registered model refs, sorted."""
        with self._lock:
            return sorted(self._by_ref)

    def __len__(self) -> int:
        return len(self._by_ref)

    def __contains__(self, model_ref: object) -> bool:
        return isinstance(model_ref, bytes | bytearray) and bytes(model_ref) in self._by_ref
