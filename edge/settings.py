"""The edge agent's settings: one frozen dataclass, every field described and bounded.

`EdgeConfig` is what ``sparsetel edge`` loads (defaults < TOML file < environment < flags,
through `sparsetel.shared.config.load_config`) and hands to `sparsetel.edge.agent.run_agent`.
The model's L, K and KPI schema are not settings: the agent reads them from the model.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..shared.config import BrokerConfig, load_config
from ..shared.errors import ConfigError
from ..shared.kpi import parse_kpi_list
from ..shared.topics import validate_id
from ..shared.wire import AGENT_BATCH, AGENT_KEY_INTERVAL, AGENT_MAX_BATCH_DELAY_S, MAX_RECORDS

__all__ = ["EdgeConfig", "default_state_dir", "edge_config_from_flags"]

_U32 = 2**32 - 1
MAX_KEY_INTERVAL = 1_000_000  # measurements between keys at most (11.6 days at 1 Hz)


@dataclass(frozen=True)
class EdgeConfig:
    """Everything one edge agent needs; L, K and the KPIs come from the model, not from here.

    - `group`, `edge_id`: ids in the topics ([A-Za-z0-9_.-]{1,64}).
    - `model`: a run directory holding manifest.json and encoder.onnx (an ONNX encoder) or
      codec.json (a temporal codec, `edge.models`).
    - `source`: a CSV file to replay, or "-" for JSON lines on stdin.
    - `rate_hz`: CSV replay pace; None = as fast as possible (synthetic clock).
    - `limit`: stop after this many measurements; None = the whole source.
    - `batch`: measurements per frame (1..4096); `max_batch_delay_s`: a frame leaves at the
      latest this long after its first measurement.
    - `state_dir`: where bdSeq, the spool and deployed models persist; None = a per-user
      folder, ``$XDG_STATE_HOME/sparsetel/edges/<edge_id>`` (``~/.local/state/...`` when
      XDG_STATE_HOME is unset), never the working directory: an agent started from another
      folder must find the same bdSeq and spool (`default_state_dir`).
    - `period_ms`: the nominal spacing of measurements without a rate.
    - `broker`: where to publish (credentials from the environment, see shared.config).
    - `kpis`: the source's KPI names, checked against the model's; None = the model's.
    - `sentinels`: extra "no value" numbers, e.g. "2147483647,RSRP=-200"; None = defaults.
    - `range_margin`: a measurement with a KPI beyond the model's training range widened
      by this many range widths on each side is rejected ("out_of_range"); None or inf = no
      check.
    - `time_column`: a CSV column holding each measurement's time (epoch ms or ISO 8601);
      None = the clock stamps them.
    - `loop`: replay the CSV again at its end; `connect_timeout_s`: how long to wait for
      the broker before measuring offline into the spool (it keeps retrying);
      `ack_timeout_s`: how long to wait for acks (and receipts) at the end.
    - `confirm`: when a frame may leave the spool: "store" (default: the cloud's receipt
      that the database has it; see `sparsetel.shared.receipt`), which survives a broker or
      decoder restart and a broker that drops a full queue, or "broker" (its PUBACK only: for
      a cloud that sends no receipts); `confirm_wait_s`: with "store", how long a frame the broker
      took waits for its receipt before it is published again (doubling per try).
    - `audit_share`: the share of measurements (drawn at random) that also travel raw in
      their frame (audit samples), so the cloud can measure its live reconstruction and
      prediction error; 0 = none.
    - `max_queued_frames`: frames held in memory for the broker; beyond, they wait in the
      spool and are resent once the queue has drained to half.
    - `health_interval_s`: how often a heartbeat goes to the HEALTH topic.
    - `trust_key`: the Ed25519 public key (PEM, from ``sparsetel keygen``) that model
      deployments must be signed with; None = the agent refuses every deployment.
    - `fetch_timeout_s`: how long to wait for a deployed model's bundle;
      `probation_frames`: a new model that fails within this many frames is rolled back.
    - `key_interval` (1..1000000), `key_interval_s` (None = off, else in (0, 86400]): with a
      temporal codec, a frame starts a new chain from a key measurement once this many
      measurements, or this many seconds of measurement time, have passed since the last key
      (and at the first frame of a run, after a model switch and after a frame that could not
      be built or sent); every other frame continues its predecessor. A key costs more bytes
      than a measurement in context and bounds what a lost frame takes with it: the cloud
      decodes again from the next key. ONNX models send frames that stand alone, no keys.
    - `spool_max_bytes`, `spool_max_age_s`: bounds of the on-disk spool
      (``state_dir/spool.db``) that holds every frame until the broker acknowledges it;
      beyond them the oldest frames are dropped, loudly (whole chains of a temporal codec:
      up to the next frame that starts one).
    """

    group: str
    edge_id: str
    model: Path
    source: str
    rate_hz: float | None = None
    limit: int | None = None
    batch: int = AGENT_BATCH
    max_batch_delay_s: float = AGENT_MAX_BATCH_DELAY_S
    state_dir: Path | None = None
    period_ms: int = 1000
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    kpis: tuple[str, ...] | None = None
    sentinels: str | None = None
    loop: bool = False
    time_column: str | None = None
    range_margin: float | None = 1.0
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    confirm: str = "store"
    audit_share: float = 0.0
    confirm_wait_s: float = 30.0
    max_queued_frames: int = 10_000
    health_interval_s: float = 30.0
    trust_key: Path | None = None
    fetch_timeout_s: float = 30.0
    probation_frames: int = 10
    key_interval: int = AGENT_KEY_INTERVAL
    key_interval_s: float | None = None
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        checks = [
            ("rate_hz", self.rate_hz is None or 0 < self.rate_hz <= 10_000, "in (0, 10000]"),
            ("limit", self.limit is None or self.limit >= 0, ">= 0"),
            ("batch", 1 <= self.batch <= MAX_RECORDS, f"in 1..{MAX_RECORDS}"),
            ("max_batch_delay_s", 0 < self.max_batch_delay_s <= 3600, "in (0, 3600]"),
            ("period_ms", 1 <= self.period_ms <= _U32, "in 1..2**32-1"),
            ("connect_timeout_s", self.connect_timeout_s > 0, "> 0"),
            ("ack_timeout_s", self.ack_timeout_s >= 0, ">= 0"),
            ("confirm", self.confirm in ("broker", "store"), '"broker" or "store"'),
            ("confirm_wait_s", 0 < self.confirm_wait_s <= 86_400, "in (0, 86400]"),
            ("audit_share", 0.0 <= self.audit_share <= 1.0, "in [0, 1]"),
            ("max_queued_frames", self.max_queued_frames >= 1, ">= 1"),
            ("health_interval_s", 0 < self.health_interval_s <= 86_400, "in (0, 86400]"),
            ("fetch_timeout_s", 0 < self.fetch_timeout_s <= 3600, "in (0, 3600]"),
            ("probation_frames", self.probation_frames >= 0, ">= 0"),
            ("key_interval", 1 <= self.key_interval <= MAX_KEY_INTERVAL, "in 1..1000000"),
            (
                "key_interval_s",
                self.key_interval_s is None or 0 < self.key_interval_s <= 86_400,
                "in (0, 86400] or unset",
            ),
            ("range_margin", self.range_margin is None or self.range_margin >= 0, ">= 0"),
            ("spool_max_bytes", self.spool_max_bytes >= 1, ">= 1"),
            ("spool_max_age_s", self.spool_max_age_s > 0, "> 0"),
        ]
        for key, ok, bound in checks:
            if not ok:
                raise ConfigError(f"must be {bound}, got {getattr(self, key)!r}", key=key)

    @property
    def resolved_state_dir(self) -> Path:
        """`state_dir`, or the per-user default for this edge (`default_state_dir`)."""
        return self.state_dir if self.state_dir is not None else default_state_dir(self.edge_id)


def default_state_dir(edge_id: str) -> Path:
    """``$XDG_STATE_HOME/sparsetel/edges/<edge_id>``; ``~/.local/state`` stands in for an
    unset or relative XDG_STATE_HOME (the XDG base directory rules).

    XDG_STATE_HOME, not XDG_DATA_HOME: what is kept here belongs to this device (a bdSeq
    counter, frames not yet delivered), like /var/lib for the system unit; data folders are
    what users copy to other machines, and a copied bdSeq would collide in the cloud.
    ValueError for a bad edge id; ConfigError when there is no home folder to use.
    """
    validate_id(edge_id)
    base = os.environ.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        root = Path(base)
    else:
        try:
            root = Path.home() / ".local" / "state"
        except RuntimeError as exc:  # no HOME and no passwd entry
            raise ConfigError(f"no home folder for the state: {exc}", key="state_dir") from exc
    return root / "sparsetel" / "edges" / edge_id


def edge_config_from_flags(args: argparse.Namespace) -> EdgeConfig:
    """The EdgeConfig of ``sparsetel edge``: defaults < ``--config`` TOML < environment
    (broker credentials) < flags (None: not given). ConfigError names the offending key."""

    def flag(name: str) -> str | None:
        value = getattr(args, name, None)
        return str(value) if isinstance(value, Path) else value

    kpis = getattr(args, "kpis", None)
    overrides = {
        "model": flag("model"),
        "source": flag("source"),
        "group": flag("group"),
        "edge_id": flag("edge_id"),
        "rate_hz": flag("rate"),
        "limit": flag("limit"),
        "batch": flag("batch"),
        "state_dir": flag("state_dir"),
        "health_interval_s": flag("health_interval"),
        "connect_timeout_s": flag("connect_timeout"),
        "ack_timeout_s": flag("ack_timeout"),
        "confirm": flag("confirm"),
        "confirm_wait_s": flag("confirm_wait"),
        "audit_share": flag("audit_share"),
        "trust_key": flag("trust_key"),
        "spool_max_bytes": flag("spool_max_bytes"),
        "spool_max_age_s": flag("spool_max_age"),
        "sentinels": flag("sentinels"),
        "time_column": flag("time_column"),
        "range_margin": flag("range_margin"),
        "key_interval": flag("key_interval"),
        "key_interval_s": flag("key_interval_s"),
        "kpis": list(parse_kpi_list(kpis)) if kpis else None,
        "broker": {"url": flag("broker")},
    }
    cfg: EdgeConfig = load_config(
        EdgeConfig, getattr(args, "config", None), "SPARSETEL_", overrides
    )
    return cfg
