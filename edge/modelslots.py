"""The models an agent holds: the encoder it runs, the one before it, and one staged to take
over, with the probation a newly deployed encoder serves.

An encoder is either kind of model (`edge.models`: an ONNX encoder or a temporal codec); a
slot holds any mix of them. The updater thread (`edge.updater`) stages a verified encoder;
the frame loop switches to it between two frames (`switch`), so every frame is encoded whole
by one model (and a temporal codec starts a new chain after every switch). A deployed
encoder is on probation for its first `probation_frames` frames: if it fails in that time,
`fall_back` returns to the previous one. Every switch is recorded in ``state_dir/models/
active.json`` (`ModelStore`), and a restarted agent starts on the model it last switched to
when it was started with the same ``--model`` (`load`); a different ``--model`` is the
operator's choice and wins.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..shared.errors import ModelMismatchError
from .models import Encoder, load_encoder
from .updater import ActiveModels, ModelStore, Staged

__all__ = ["ModelSlot"]

log = logging.getLogger(__name__)


class ModelSlot:
    """The running encoder (`encoder`), the previous one (`previous`, None when there is
    none) and the staged one. `base` is the ``--model`` run directory."""

    def __init__(self, base: Path, store: ModelStore, probation_frames: int) -> None:
        self.base = base.resolve()
        self.store = store
        self.probation_frames = probation_frames
        self.encoder, self.previous = self._load()
        self.probation = 0  # frames the newest encoder must still encode to be trusted
        self.deployment = ""  # the deployment that brought the running encoder
        self._staged: Staged | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Encoder, Encoder | None]:
        """The encoder to start with and the one before it: the model last switched to, if
        it was deployed over this same ``--model``; else ``--model`` itself."""
        active = self.store.read_active()
        if active is None or active.base != str(self.base):
            if active is not None:
                log.info("started with another --model: deployed models are set aside")
            return load_encoder(self.base), None
        try:
            encoder = load_encoder(active.current)
            encoder.self_test()
        except ModelMismatchError as exc:
            log.error("deployed model %s unusable (%s): starting on --model", active.current, exc)
            return load_encoder(self.base), None
        previous = None
        if active.previous is not None:
            try:
                previous = load_encoder(active.previous)
            except ModelMismatchError as exc:
                log.warning("previous model %s is unusable, no rollback: %s", active.previous, exc)
        log.info("running deployed model %s", encoder.model_sha256[:16])
        return encoder, previous

    @property
    def staged(self) -> Staged | None:
        return self._staged

    def stage(self, staged: Staged) -> None:
        """Any thread: have the frame loop switch to `staged.encoder` at its next chance."""
        with self._lock:
            self._staged = staged

    def switch(self) -> tuple[Staged, Encoder] | None:
        """Frame loop, between frames: run the staged encoder and record it; returns what
        was staged and the encoder it replaced, or None when nothing was staged."""
        if self._staged is None:
            return None
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is None:
            return None
        previous, self.encoder = self.encoder, staged.encoder
        self.previous = previous
        self.probation = self.probation_frames if staged.kind == "deploy" else 0
        self.deployment = staged.deployment
        self._record()
        log.info("switched to model %s (%s)", self.encoder.model_sha256[:16], staged.kind)
        return staged, previous

    def encoded(self) -> None:
        """The running encoder encoded one more frame."""
        self.probation = max(0, self.probation - 1)

    def fall_back(self) -> Encoder | None:
        """The running encoder failed: back to the previous one if it is still on probation.
        Returns the failed encoder, or None when it stays (no probation, nothing before)."""
        if self.probation <= 0 or self.previous is None:
            return None
        failed, self.encoder, self.previous = self.encoder, self.previous, None
        self.probation = 0
        self._record()
        return failed

    def _record(self) -> None:
        previous = str(self.previous.model_dir) if self.previous is not None else None
        self.store.write_active(ActiveModels(str(self.base), str(self.encoder.model_dir), previous))
