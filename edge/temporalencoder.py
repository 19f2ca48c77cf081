"""The edge's temporal codec: ``codec.json`` run by `shared.temporalcodec`, checked before use.

A temporal run directory holds ``codec.json`` and ``manifest.json`` (``extra["codec"] ==
"temporal"``, `edge.models`). The codec codes each measurement against the previous decoded
one, so a frame's payload continues the `ChainState` its predecessor left; the agent keeps
that state between frames (`edge.framer`) and starts a new chain from a key measurement at the
first measurement of a frame when it must. numpy and `shared` only: no onnxruntime.

Before the agent trusts a codec it checks the file's sha256 against the manifest's
`model_sha256`, that the codec and the manifest describe the same model (KPIs, L), codes the
manifest's probe inputs as one frame from a key and compares the payload with the manifest's
``probe_payload`` byte for byte (`self_test`), and compares the source's KPIs to the
manifest's (`check_schema`); each failure is a `ModelMismatchError` saying what differs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from ..shared import native
from ..shared.errors import ModelMismatchError
from ..shared.manifest import ModelManifest
from ..shared.rundir import CODEC_FILE, MANIFEST_FILE
from ..shared.temporalcodec import ChainState, TemporalCodec
from ..shared.temporalpayload import Decoded, encode_payload
from .models import ManifestChecks, is_temporal

__all__ = ["TemporalEncoder"]

log = logging.getLogger(__name__)

_HEX = re.compile(r"(?:[0-9a-f]{2})+")
MAX_CODEC_BYTES = 16 * 1024 * 1024  # a bundle's limit: a larger file is no codec of ours


class TemporalEncoder(ManifestChecks):
    """Code frames of measurements with a verified temporal codec.

    `model_dir` is a run directory holding ``codec.json`` and ``manifest.json``. The codec is
    parsed from the very bytes that were hashed, so what runs is what was checked.
    """

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.model_dir = model_dir.resolve()
        self.manifest = ModelManifest.load(model_dir / MANIFEST_FILE)
        if not is_temporal(self.manifest):
            raise ModelMismatchError(f"{model_dir} does not hold a temporal codec")
        path = model_dir / CODEC_FILE
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CODEC_BYTES + 1)
        except OSError as exc:
            raise ModelMismatchError(f"cannot read codec {path}: {exc}") from exc
        if len(data) > MAX_CODEC_BYTES:
            raise ModelMismatchError(f"{path} is over {MAX_CODEC_BYTES} bytes")
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.manifest.model_sha256:
            raise ModelMismatchError(
                f"{path} has sha256 {actual} but the manifest says {self.manifest.model_sha256}"
            )
        self.codec = TemporalCodec.from_json(data)
        self._check_manifest()
        # What the rest of the edge needs; L, K and D as the frames' heads carry them.
        self.L: int = self.codec.L
        self.K: int = self.codec.K  # lattice words; a key measurement's code is K + key word
        self.D: int = self.codec.D
        self.kpis: tuple[str, ...] = self.manifest.kpis
        self.model_ref: bytes = self.manifest.model_ref
        self.model_sha256: str = self.manifest.model_sha256
        log.info(
            "temporal codec %s loaded: L=%s K=%s D=%s sha256=%s, encoder %s",
            model_dir,
            self.L,
            self.K,
            self.D,
            actual[:16],
            native.status().get("temporalpayload", "source"),
        )

    @property
    def runtime_version(self) -> str:
        return f"numpy {np.__version__}"

    def _check_manifest(self) -> None:
        codec, manifest = self.codec, self.manifest
        if codec.kpis != manifest.kpis:
            raise ModelMismatchError(
                f"the codec codes KPIs {list(codec.kpis)}, the manifest lists {list(manifest.kpis)}"
            )
        if codec.L != manifest.L:
            raise ModelMismatchError(f"the codec has L={codec.L}, the manifest L={manifest.L}")

    def encode_frame(
        self, x: np.ndarray, key: bool, state: ChainState | None
    ) -> tuple[bytes, Decoded]:
        """Code one frame: measurements `x` (shape: [n, D], raw units, NaN = missing), the
        first a key measurement when `key` (then `state` is ignored), else all continuing
        `state`, the `Decoded.state` of the previous frame. Returns the payload and the
        decoder's copy of it. ValueError for a badly shaped `x`; ModelMismatchError when the
        codec cannot code it."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.D or len(x) == 0:
            raise ValueError(f"x must have shape [n >= 1, {self.D}], got {list(x.shape)}")
        if not key and state is None:
            raise ValueError("a frame that continues a chain needs its predecessor's state")
        keys = [key] + [False] * (len(x) - 1)
        try:
            return encode_payload(self.codec, x, keys, None if key else state)
        except (ValueError, IndexError) as exc:
            raise ModelMismatchError(f"the temporal codec cannot code this frame: {exc}") from exc

    def self_test(self) -> int:
        """Code the manifest's probe inputs as one frame from a key and compare the payload
        with the manifest's ``probe_payload``, byte for byte.

        Returns the number of probes checked. Raises ModelMismatchError when the manifest has
        no probes or the payload differs (another numpy, a corrupted or swapped codec)."""
        probes = self.manifest.probe_inputs
        if not probes:
            raise ModelMismatchError("manifest has no probe_inputs: the codec cannot self-test")
        want_hex = self.manifest.extra.get("probe_payload")
        if not isinstance(want_hex, str) or not _HEX.fullmatch(want_hex):
            raise ModelMismatchError("manifest has no hex probe_payload: no self-test possible")
        want = bytes.fromhex(want_hex)
        try:
            x = np.array(probes, dtype=np.float64)
            have, _ = self.encode_frame(x, True, None)
        except ValueError as exc:
            raise ModelMismatchError(f"manifest probe_inputs are unusable: {exc}") from exc
        if have != want:
            at = next((i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), None)
            where = f"from byte {at}" if at is not None else "in length"
            raise ModelMismatchError(
                f"self-test failed on {len(probes)} probes: the payload differs {where} "
                f"({len(have)} bytes {have.hex()[:32]}..., the manifest's {len(want)} bytes "
                f"{want_hex[:32]}...)"
            )
        log.debug("temporal codec self-test passed on %s probes", len(probes))
        return len(probes)
