"""A temporal-codec run as the decoder service uses it: `TemporalModel`.

A run exported with ``sparsetel train --codec temporal`` holds RUN/codec.json (the shipped
`shared.temporalcodec.TemporalCodec`, whose sha256 is the manifest's `model_sha256`) and the
KPI predictor fitted on what the cloud decodes, RUN/predictor/decoded
(`cloud.training.changepredictor.ChangePredictor`). Both run on numpy alone, so loading one
starts no torch in the service. Its frames are version 3 chained frames
(`shared.chainframe`), decoded in order by `cloud.ingest.chains`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ...shared.errors import ModelMismatchError
from ...shared.manifest import ModelManifest, file_sha256
from ...shared.rundir import CODEC_FILE, MANIFEST_FILE, PREDICTOR_DIR
from ...shared.temporalcodec import TemporalCodec
from ..codec.payloaddecoder import decode_payload

__all__ = ["PREDICTOR_NAME", "TemporalModel", "is_temporal_run"]

PREDICTOR_NAME = "decoded"  # RUN/predictor/decoded: fitted on the decoded KPIs


class Predictor(Protocol):
    """What the service uses of `cloud.training.changepredictor.ChangePredictor`."""

    @property
    def window(self) -> int: ...

    @property
    def horizon(self) -> int: ...

    def predict(self, zhat: np.ndarray) -> np.ndarray: ...

    def predict_many(self, sessions: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def is_temporal_run(run_dir: Path) -> bool:
    """Whether `run_dir` is a temporal-codec run (RUN/codec.json beside its manifest)."""
    return (run_dir / CODEC_FILE).is_file()


class TemporalModel:
    """The codec of a temporal run and, when the run has one, its KPI predictor.

    `predict(zhat)`: decoded KPIs of consecutive measurements (normalised, [T, D], NaN
    missing) -> the target in raw units at t + horizon ([T], NaN for the first W - 1 rows);
    `window` is 0 without a predictor."""

    def __init__(
        self, manifest: ModelManifest, codec: TemporalCodec, predictor: Predictor | None = None
    ) -> None:
        if (manifest.L, manifest.kpis) != (codec.L, codec.kpis):
            raise ModelMismatchError("manifest and codec.json describe different models")
        self.manifest = manifest
        self.codec = codec
        self._predictor = predictor

    @classmethod
    def load(cls, run_dir: str | Path) -> TemporalModel:
        """Load an exported temporal run; ModelMismatchError when codec.json is not the file
        the manifest names or either cannot be read."""
        run = Path(run_dir)
        manifest = ModelManifest.load(run / MANIFEST_FILE)
        path = run / CODEC_FILE
        if file_sha256(path) != manifest.model_sha256:
            raise ModelMismatchError(f"{path} is not the codec {run}/{MANIFEST_FILE} names")
        codec = TemporalCodec.from_json(path.read_text(encoding="utf-8"))
        predictor: Predictor | None = None
        folder = run / PREDICTOR_DIR / PREDICTOR_NAME
        if folder.is_dir():
            # numpy only at load and predict time (torch only where it is fitted)
            from ..training.changepredictor import ChangePredictor, target_column

            predictor = ChangePredictor.load(folder, target_column(codec, manifest.target)[1])
        return cls(manifest, codec, predictor)

    def warm(self) -> None:
        """Load the compiled decoder and tree walk now (numba reads them from its cache, about
        a second the first time in a process), so that the first frame a worker takes is not
        the one that waits."""
        decode_payload(self.codec, b"", [], None)
        if self._predictor is not None:
            self.predict(np.zeros((max(self.window, 1), self.codec.D)))

    @property
    def window(self) -> int:
        """W: the measurements a prediction reads (0: no predictor)."""
        return 0 if self._predictor is None else int(self._predictor.window)

    @property
    def horizon(self) -> int:
        return self.manifest.horizon if self._predictor is None else self._predictor.horizon

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw KPIs ([N, D]) in the codec's normalised space, NaN kept."""
        return np.asarray(self.codec.normalise(np.asarray(x, dtype=np.float64)))

    def predict(self, zhat: np.ndarray) -> np.ndarray:
        """See the class docstring; all NaN without a predictor."""
        if self._predictor is None:
            return np.full(len(zhat), np.nan)
        return np.asarray(self._predictor.predict(zhat), dtype=np.float64)

    def predict_many(self, sessions: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` of each of several sessions, at once (the same values)."""
        if self._predictor is None:
            return [np.full(len(z), np.nan) for z in sessions]
        return [np.asarray(v, dtype=np.float64) for v in self._predictor.predict_many(sessions)]
