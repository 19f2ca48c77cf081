"""The rows the store keeps: received frames (`FrameRow`), their decoded measurements
(`MeasurementRow`), the live-accuracy sums of each minute (`AccuracyRow`, `KpiError`,
computed by `cloud.ingest.audit`), and the temporal-codec chains' tips and waiting frames
(`ChainTip`, `PendingFrame`, `cloud.store.chains`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SUMS",
    "AccuracyRow",
    "ChainTip",
    "FrameRow",
    "KpiError",
    "MeasurementRow",
    "PendingFrame",
]


@dataclass(frozen=True)
class FrameRow:
    """One received frame, as the ``frames`` table keeps it (model_ref: the 8 wire bytes;
    digest: `cloud.ingest.digest.frame_digest`, None when not known)."""

    edge: str
    bd_seq: int
    seq: int
    model_ref: bytes
    n_records: int
    n_bytes: int
    historical: bool
    received_ms: int
    digest: str | None = None


@dataclass(frozen=True)
class MeasurementRow:
    """One decoded record of a frame: `kpis` has D values in raw units, NaN where unknown.

    `audit` is the raw measurement the edge sent beside the code (FLAG_AUDIT), when it did.
    """

    rec: int
    t_ms: int
    nnz: int
    codes: tuple[int, ...]
    kpis: tuple[float, ...]
    prediction: float | None = None
    predicted_t_ms: int | None = None
    audit: tuple[float, ...] | None = None


# The fields of an AccuracyRow that are sums: a bucket adds them up, row after row.
SUMS = ("audits", "values_n", "recon_se", "recon_ss", "target_n", "target_ae", "target_se")


@dataclass(frozen=True)
class KpiError:
    """One KPI's reconstruction sums in a bucket: measured values `n`, squared error `se`
    and squared true values `ss` in the normalised space, squared error `se_raw` in units."""

    kpi: str
    n: int
    se: float
    ss: float
    se_raw: float


@dataclass(frozen=True)
class AccuracyRow:
    """The error sums of one bucket of one edge and model (see the module docstring)."""

    edge: str
    model_ref: str
    L: int
    bucket_ms: int
    audits: int = 0
    values_n: int = 0
    recon_se: float = 0.0
    recon_ss: float = 0.0
    target_n: int = 0
    target_ae: float = 0.0
    target_se: float = 0.0
    kpis: tuple[KpiError, ...] = ()


@dataclass(frozen=True)
class ChainTip:
    """What frame `seq` of an edge's session `bd_seq` left its chain: the decoder state
    (`shared.temporalcodec.ChainState` JSON) of model `model_sha256`, the time of its last
    measurement and the chain's period; `state` None when the frame was given up (`reason`
    says why), so its chain cannot go on."""

    bd_seq: int
    seq: int
    model_sha256: str | None
    state: str | None
    last_ms: int
    period_ms: int
    reason: str | None = None


@dataclass(frozen=True)
class PendingFrame:
    """A chained frame kept until its predecessor is decoded, exactly as it came."""

    bd_seq: int
    seq: int
    n_records: int
    digest: str
    topic: str
    payload: bytes
    received_ms: int
