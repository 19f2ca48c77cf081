"""The models a decoder knows, found by the 8-byte model ref every frame carries.

A frame names its model by the first 8 bytes of the encoder's sha256 (`ModelManifest.
model_ref`); the registry maps that ref to a decoder able to turn the frame's codes back into
KPIs and predictions. `Decoder` is what the service needs from one: `cloud.codec.decoder.CloudCodec`
provides it, and tests can pass small fakes.

Edges upgrade at different times, so many models live at once. Besides the models it is
given, a registry with a `models_dir` looks there for a model it does not know when a frame
or a birth names it (`resolve`): every run directory whose ``manifest.json`` has that ref.
Dropping a newly deployed run into that folder is enough for the service to decode its
frames, including the ones it parked meanwhile (`cloud.ingest.handler`).

A temporal-codec run (RUN/codec.json beside its manifest) loads as a
`cloud.ingest.temporal.TemporalModel` instead (`Model` is either): its ref is the first
8 bytes of the sha256 of codec.json, and its frames are version 3 chained frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ...shared.errors import ModelMismatchError
from ...shared.manifest import ModelManifest
from .temporal import TemporalModel, is_temporal_run

__all__ = ["Decoder", "Model", "ModelRegistry"]

log = logging.getLogger(__name__)


class Decoder(Protocol):
    """What the decoder service uses of a model (`cloud.codec.decoder.CloudCodec` is one)."""

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

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw KPIs (shape: [N, D]) in the model's normalised space, NaN kept."""
        ...

    def counts(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        """Codeword counts, float32 (shape: [N, K]), the predictor's input rows."""
        ...

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        """Target in raw units at t+h (shape: [N]) from count windows (shape: [N, W, K])."""
        ...

    def predict_sequence(self, counts: np.ndarray) -> np.ndarray:
        """`predict` on every window of W consecutive rows of `counts` (shape: [R, K]):
        shape [R - W + 1] (empty when R < W)."""
        ...


Model = Decoder | TemporalModel  # a memoryless (ONNX) run's decoder, or a temporal run

RESCAN_S = 5.0  # a model still missing is looked for again after this long


def _load_run(run_dir: Path) -> Model:
    if is_temporal_run(run_dir):  # numpy and numba
        model = TemporalModel.load(run_dir)
        model.warm()
        return model
    from ..codec.decoder import CloudCodec  # torch lives behind the codec; load it only when used

    codec: Decoder = CloudCodec.load(run_dir)
    return codec


class ModelRegistry:
    """model_ref (8 bytes) -> Model (a Decoder or a TemporalModel). Safe to read from one
    thread while another adds.

    `models_dir`: a folder of run directories searched for models not known yet (`resolve`);
    `load` turns a run directory into a decoder (default: `CloudCodec.load`).
    """

    def __init__(
        self,
        decoders: Iterable[Model] = (),
        models_dir: Path | None = None,
        load: Callable[[Path], Model] = _load_run,
    ) -> None:
        self._by_ref: dict[bytes, Model] = {}
        self._lock = threading.Lock()
        self.models_dir = models_dir
        self._load = load
        self._looked = -RESCAN_S  # when models_dir was last searched (time.monotonic)
        self._found: dict[bytes, list[Path]] = {}  # what it held then: ref -> run dirs
        for decoder in decoders:
            self.add(decoder)

    def add(self, decoder: Model) -> bytes:
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
        """Load an exported run directory (`load`) and register it."""
        return self.add(self._load(Path(run_dir)))

    def resolve(self, model_ref: bytes) -> Model | None:
        """The decoder for `model_ref`, looking in `models_dir` when it is not registered;
        None when it is nowhere. The folder is read at most every `RESCAN_S`, whatever refs
        frames name: a stream of made-up refs costs neither a search each nor memory."""
        ref = bytes(model_ref)
        known = self.get(ref)
        if known is not None or self.models_dir is None:
            return known
        now = time.monotonic()
        if now - self._looked >= RESCAN_S:
            self._looked = now
            self._found = _runs_by_ref(self.models_dir)
        for run_dir in self._found.pop(ref, []):
            try:
                self.add_run(run_dir)
            except Exception as exc:  # a broken run must not stop the search or the service
                log.warning("cannot load model %s from %s: %s", ref.hex(), run_dir, exc)
                continue
            return self.get(ref)
        return None

    def get(self, model_ref: bytes) -> Model | None:
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


def _runs_by_ref(models_dir: Path) -> dict[bytes, list[Path]]:
    """The run directories in `models_dir` by the model ref of their manifest (a manifest
    that cannot be read is logged and left out)."""
    found: dict[bytes, list[Path]] = {}
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        try:
            ref = ModelManifest.load(manifest_path).model_ref
        except Exception as exc:  # a broken run must not stop the search or the service
            log.warning("cannot read the manifest %s: %s", manifest_path, exc)
            continue
        found.setdefault(ref, []).append(manifest_path.parent)
    return found
