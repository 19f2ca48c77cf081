"""The model manifest: what an exported encoder is, so the edge never guesses L, K or the KPIs.

The manifest is a JSON file (``manifest.json``, `shared.rundir`) written beside
``encoder.onnx`` by ``sparsetel export``. The edge reads L, K, the KPI schema and the
normalisation from it (they are also baked into the ONNX graph), and checks the encoder's
sha256 against it before use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelMismatchError

# Codebook size a manifest, a birth and a chained frame's header allow: a temporal codec's
# words number 16**|g| per group of KPIs, over a million for a thousand KPIs in threes.
MAX_K = 2**24

__all__ = [
    "MANIFEST_VERSION",
    "MAX_K",
    "KpiNorm",
    "ModelManifest",
    "file_sha256",
    "schema_hash",
]

MANIFEST_VERSION = 1


def schema_hash(kpis: list[str] | tuple[str, ...]) -> str:
    """sha256 (hex) of the ordered KPI names: equal hashes mean the same measurement vector."""
    return hashlib.sha256(json.dumps(list(kpis)).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class KpiNorm:
    """How one KPI is normalised: ``z = (f(x) - mean) / std`` with ``f = log1p`` when `log`.

    `lo` and `hi` are the range seen in training (raw units), for sanity checks at the edge.
    """

    name: str
    mean: float
    std: float
    log: bool = False
    lo: float = float("-inf")
    hi: float = float("inf")


@dataclass(frozen=True)
class ModelManifest:
    """Everything needed to use an exported encoder and to decode what it emits.

    The encoder's ONNX graph takes ``kpis`` (float32, shape [N, D], raw units, NaN where a
    KPI is missing) and returns ``codes`` (int64, shape [N, L], ascending, padded with K) and
    ``nnz`` (int64, shape [N]); record i on the wire is ``codes[i, :nnz[i]]``.
    """

    model_sha256: str
    L: int
    K: int
    kpis: tuple[str, ...]
    norms: tuple[KpiNorm, ...]
    target: str
    horizon: int
    window: int
    opset: int
    created: str = ""
    run: str = ""
    seed: int = 0
    sparsetel_version: str = ""
    probe_inputs: tuple[tuple[float, ...], ...] = ()
    probe_codes: tuple[tuple[int, ...], ...] = ()
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def D(self) -> int:
        return len(self.kpis)

    @property
    def model_ref(self) -> bytes:
        """The 8 bytes a frame carries to name this model: the start of the encoder's sha256."""
        return bytes.fromhex(self.model_sha256[:16])

    @property
    def kpi_schema_hash(self) -> str:
        return schema_hash(self.kpis)

    def to_json(self) -> str:
        data = asdict(self)
        data["kpi_schema_hash"] = self.kpi_schema_hash
        data["model_ref"] = self.model_ref.hex()
        return json.dumps(data, indent=2, allow_nan=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelMismatchError(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelMismatchError("manifest must be a JSON object")
        version = data.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ModelMismatchError(
                f"manifest_version {version!r} is not supported (expected {MANIFEST_VERSION})"
            )
        data.pop("kpi_schema_hash", None)
        data.pop("model_ref", None)
        try:
            data["kpis"] = tuple(data["kpis"])
            data["norms"] = tuple(KpiNorm(**n) for n in data["norms"])
            data["probe_inputs"] = tuple(tuple(r) for r in data.get("probe_inputs", ()))
            data["probe_codes"] = tuple(tuple(r) for r in data.get("probe_codes", ()))
            manifest = cls(**data)
        except (KeyError, TypeError) as exc:
            raise ModelMismatchError(f"manifest is missing or has a bad field: {exc}") from exc
        manifest.validate()
        return manifest

    @classmethod
    def load(cls, path: str | Path) -> ModelManifest:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelMismatchError(f"cannot read manifest {path}: {exc}") from exc
        return cls.from_json(text)

    def validate(self) -> None:
        """Raise ModelMismatchError when the fields contradict each other."""
        if not 1 <= self.L <= 255:
            raise ModelMismatchError(f"L must be in 1..255, got {self.L}")
        if not 2 <= self.K <= MAX_K:
            raise ModelMismatchError(f"K must be in 2..{MAX_K}, got {self.K}")
        if len(self.norms) != len(self.kpis):
            raise ModelMismatchError("norms and kpis differ in length")
        if [n.name for n in self.norms] != list(self.kpis):
            raise ModelMismatchError("norms are not in the order of kpis")
        if len(self.model_sha256) != 64:
            raise ModelMismatchError("model_sha256 must be 64 hex characters")
