"""Evaluate a temporal-codec run through the path that ships: `evaluate_temporal`.

The shipped encoder (`shared.temporalcodec`, the run's codec.json) codes each session as an
edge does; every frame is written as wire bytes (version 3, `shared.chainframe`), read back
and decoded by the cloud's decoder from those bytes alone. Bits per measurement are the bits
the frames' payloads carry; the reconstruction scored is what the cloud decoded (and it must
equal the encoder's own copy, bit for bit: `edge_cloud_agree`).

Two framings are reported:
- the benchmark's (top-level fields): frames of WIRE_BATCH measurements, each starting with
  a key measurement and flushing its range coder, so every frame stands alone;
- the agent's defaults (`agent`): at 1 Hz a frame leaves every second with one or two
  measurements (`shared.wire.records_per_frame`), each continuing its predecessor's state,
  with a key measurement every `shared.wire.AGENT_KEY_INTERVAL` measurements.

The KPI predictor is scored on what the agent's frames decode to, as it runs in the cloud.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...shared.chainframe import ChainHead, chain_frame, decode_chain_frame, encode_chain_frame
from ...shared.health import beat_payload
from ...shared.receipt import encode_receipt
from ...shared.rundir import CODEC_FILE, EVALUATION_FILE, PREDICTOR_DIR, read_config, write_json
from ...shared.temporalcodec import ChainState, TemporalCodec
from ...shared.topics import data_topic, health_topic, receipt_topic
from ...shared.wire import mqtt_publish_overhead
from ..codec.fidelity import snr
from ..codec.normaliser import forward_fill
from ..codec.payloaddecoder import decode_payload
from ..codec.shipping import CodedStream, code_stream
from ..data.datasets import Session
from .changepredictor import ChangePredictor, target_column, target_scores
from .evaldata import eval_sessions, resolve_names
from .temporalrun import agent_framing

__all__ = ["WIRE_BATCH", "evaluate_temporal"]

log = logging.getLogger(__name__)

WIRE_BATCH = 50  # the benchmark's framing: one key and one coder flush per 50 measurements
PERIOD_MS = 1000  # 1 Hz
JUMP = 1.0  # a change of at least one training standard deviation between two measurements
TRACKED = 0.25  # ... is tracked once the reconstruction is within a quarter of one
TRACK_LIMIT = 60  # measurements looked at after a jump
SECONDS_PER_DAY = 86_400
PUBACK_BYTES = 4  # MQTT 3.1.1 PUBACK: fixed header 2 + packet id 2
HEALTH_INTERVAL_S = 30.0  # the agent's default heartbeat interval (edge.settings)
DAYS_UP = 30  # the beat and receipt are sized for an edge a month into its bdSeq


def _wire(
    codec: TemporalCodec, stream: CodedStream, chained: bool, model_ref: bytes
) -> tuple[list[bytes], np.ndarray]:
    """The stream's frames as wire bytes, and what the cloud decodes from those bytes
    (normalised, [T, D], NaN missing)."""
    frames, recon = [], []
    state: ChainState | None = None
    t = 0
    for seq, (payload, keys) in enumerate(zip(stream.payloads, stream.keys, strict=True)):
        times = [t + PERIOD_MS * i for i in range(len(keys))]
        link = chained and seq > 0 and not keys[0]
        head = None if link else ChainHead(model_ref, times[0], PERIOD_MS, codec.L, codec.K)
        key_at = tuple(i for i, k in enumerate(keys) if k)
        frame = chain_frame(1, seq, times, PERIOD_MS, key_at, payload, head, t - PERIOD_MS)
        data = encode_chain_frame(frame)
        back = decode_chain_frame(data)
        flags = [i in back.keys for i in range(back.count)]
        decoded = decode_payload(codec, back.payload, flags, state if back.chained else None)
        state = decoded.state
        frames.append(data)
        recon.append(decoded.recon)
        t = times[-1] + PERIOD_MS
    return frames, np.concatenate(recon) if recon else np.zeros((0, codec.D))


def _rate(
    codec: TemporalCodec, sessions: Sequence[Session], frame: int, key_interval: int | None
) -> tuple[dict[str, Any], list[np.ndarray], bool]:
    """Code every session at one framing: rate figures, the cloud's reconstructions and
    whether they equal the encoder's, bit for bit."""
    model_ref = bytes(8)
    topic = data_topic("fleet", "edge-0001")
    bits = frame_bytes = link = n = escapes = 0
    nnz: list[int] = []
    recons, agree = [], True
    for s in sessions:
        stream = code_stream(codec, s.kpis, frame, key_interval)
        frames, recon = _wire(codec, stream, key_interval is not None, model_ref)
        agree &= bool(np.array_equal(recon, stream.recon, equal_nan=True))
        recons.append(recon)
        bits += stream.payload_bits
        frame_bytes += sum(len(f) for f in frames)
        link += sum(len(f) + mqtt_publish_overhead(topic, len(f)) + PUBACK_BYTES for f in frames)
        n += len(s)
        nnz.extend(len(c) for c in stream.codes)
        escapes += sum(max(len(c) - codec.L, 0) for c in stream.codes)
    rate = {
        "bits_per_measurement": bits / n,
        "frame_bytes_per_measurement": frame_bytes / n,
        "wire_bytes_per_measurement": link / n,
        "mean_nonzeros": float(np.mean(nnz)),
        "max_nonzeros": int(np.max(nnz)),
        "escape_words": escapes,
    }
    return rate, recons, agree


def _link_per_day(wire_per_measurement: float, per_frame: int) -> dict[str, float]:
    """Bytes per day between one edge at 1 Hz (the agent's defaults) and the broker: its
    frames with their MQTT framing and PUBACKs, its heartbeats (every HEALTH_INTERVAL_S) and
    the store receipts it gets back (``confirm = "store"``, one per frame at this rate), each
    with its MQTT framing. Beat and receipt are built as the agent and the cloud build them,
    with the counters of an edge DAYS_UP days into its bdSeq."""
    group, edge, seconds = "fleet", "edge-0001", DAYS_UP * SECONDS_PER_DAY
    frames_sent = seconds // per_frame
    beat = beat_payload({
        "edge": edge, "group": group, "bd_seq": 2**31 + 12_345, "model_sha256": "0" * 64,
        "timestamp_ms": 1_790_000_000_000, "uptime_s": float(seconds),
        "measurements": seconds, "next_seq": frames_sent, "frames_sent": frames_sent,
        "frames_acked": frames_sent, "replayed": 0, "confirmed": frames_sent, "audits": 0,
        "rejects": {}, "spool_depth": 1, "spool_bytes": 64, "spool_dropped": 0, "dropped": [],
        "encode_ms_per_measurement": 0.085, "encode_batch_ms_max": 0.412,
    })  # fmt: skip
    (receipt,) = encode_receipt(2**31 + 12_345, [frames_sent])
    beat_bytes = len(beat) + mqtt_publish_overhead(health_topic(group, edge), len(beat), qos=0)
    receipt_bytes = len(receipt) + mqtt_publish_overhead(
        receipt_topic(group, edge), len(receipt), qos=0
    )
    frames = wire_per_measurement * SECONDS_PER_DAY
    beats = beat_bytes * SECONDS_PER_DAY / HEALTH_INTERVAL_S
    receipts = receipt_bytes * SECONDS_PER_DAY / per_frame
    return {
        "link_bytes_per_day": frames + beats + receipts,
        "link_bytes_per_day_frames": frames,
        "link_bytes_per_day_heartbeats": beats,
        "link_bytes_per_day_receipts": receipts,
    }


def _fidelity(
    codec: TemporalCodec, sessions: Sequence[Session], recon: np.ndarray
) -> dict[str, Any]:
    """SNR overall and per KPI (normalised space, the benchmark's definition), each KPI's
    largest error in raw units, and how many measurements a jump takes to be tracked."""
    x = np.concatenate([s.kpis for s in sessions]).astype(np.float64)
    z = codec.normalise(x)
    seen = np.isfinite(z)
    z0 = np.where(seen, z, 0.0)
    raw_err = np.abs(codec.to_raw(np.where(seen, recon, 0.0)) - np.where(seen, x, 0.0))
    out: dict[str, Any] = snr(z0, np.where(seen, recon, 0.0), seen)
    out["snr_db_per_kpi"] = {
        k: snr(z0[:, j], np.where(seen[:, j], recon[:, j], 0.0), seen[:, j])["snr_db"]
        for j, k in enumerate(codec.kpis)
    }
    out["max_abs_error_per_kpi"] = {
        k: float(np.max(np.where(seen[:, j], raw_err[:, j], 0.0))) for j, k in enumerate(codec.kpis)
    }
    bounds = np.cumsum([0] + [len(s) for s in sessions])
    out["jump_tracking"] = {
        k: _tracking([(z[a:b, j], recon[a:b, j]) for a, b in itertools.pairwise(bounds)])
        for j, k in enumerate(codec.kpis)
    }
    return out


def _tracking(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Jumps of at least JUMP between consecutive observed values, and the measurements
    until the reconstruction is within TRACKED of the value (0 = at once; TRACK_LIMIT =
    not within the limit)."""
    lags = []
    for x, xh in series:
        jumps = np.flatnonzero(np.abs(np.diff(x)) >= JUMP) + 1
        for t in jumps:
            close = np.abs(xh[t : t + TRACK_LIMIT] - x[t : t + TRACK_LIMIT]) <= TRACKED
            hit = np.flatnonzero(close)
            lags.append(int(hit[0]) if len(hit) else TRACK_LIMIT)
    if not lags:
        return {"jumps": 0}
    a = np.asarray(lags)
    return {
        "jumps": len(a),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def _target(
    codec: TemporalCodec,
    predictors: dict[str, ChangePredictor],
    sessions: Sequence[Session],
    recons: Sequence[np.ndarray],
    horizon: int,
) -> dict[str, Any]:
    """The predictor on decoded KPIs, the same predictor on raw KPIs (the ceiling) and
    persistence (the raw last observed value), on the rows every one of them can predict."""
    ys: list[np.ndarray] = []
    preds: dict[str, list[np.ndarray]] = {name: [] for name in (*predictors, "persistence")}
    for s, recon in zip(sessions, recons, strict=True):
        y = s.target.astype(np.float64)
        raw = codec.normalise(s.kpis)
        p = {
            "": predictors[""].predict(recon),
            "raw_": predictors["raw_"].predict(raw),
            "persistence": forward_fill(y),
        }
        t = np.arange(len(y) - horizon)
        ok = np.isfinite(y[t + horizon]) & np.all([np.isfinite(v[t]) for v in p.values()], 0)
        ys.append(y[t + horizon][ok])
        for name, v in p.items():
            preds[name].append(v[t][ok])
    y = np.concatenate(ys)
    out: dict[str, Any] = {"target_rows": len(y)}
    for name in ("", "raw_", "persistence"):
        mae, r2 = target_scores(y, np.concatenate(preds[name]))
        key = "persistence_" if name == "persistence" else name
        out[f"{key}target_mae"], out[f"{key}target_r2"] = mae, r2
    return out


def _target_error(
    codec: TemporalCodec,
    sessions: Sequence[Session],
    recons: Sequence[np.ndarray],
    target: str,
) -> dict[str, Any]:
    """The target's reconstruction error beside its typical one-second change (raw units):
    no predictor can win on MAE where the first is not well below the second."""
    if target not in codec.kpis:
        return {}
    j = codec.kpis.index(target)
    err, change = [], []
    for s, recon in zip(sessions, recons, strict=True):
        x = s.kpis[:, j].astype(np.float64)
        xh = codec.to_raw(np.where(np.isfinite(recon), recon, 0.0))[:, j]
        err.append(np.abs(xh - x)[np.isfinite(x)])
        d = np.abs(np.diff(x))
        change.append(d[np.isfinite(d)])
    return {
        "target_reconstruction_mae": float(np.mean(np.concatenate(err))),
        "target_change_mae": float(np.mean(np.concatenate(change))),
    }


def evaluate_temporal(
    run_dir: str | Path,
    data: str | Path,
    kpis: str | Sequence[str] | None = None,
    target: str | None = None,
    sentinels: str | None = None,
) -> dict[str, Any]:
    """Evaluate the temporal-codec run in `run_dir` on `data` (see the module docstring)."""
    run = Path(run_dir)
    codec = TemporalCodec.from_json((run / CODEC_FILE).read_text(encoding="utf-8"))
    config = read_config(run)
    horizon = int(config["horizon"])
    names, target_name = resolve_names(codec.kpis, config["target"], kpis, target)
    sessions, split = eval_sessions(run, Path(data), names, target_name, sentinels)
    rate, recons, agree = _rate(codec, sessions, WIRE_BATCH, None)
    per_frame, key_interval = agent_framing()
    agent, agent_recons, agent_agree = _rate(codec, sessions, per_frame, key_interval)
    link = _link_per_day(agent["wire_bytes_per_measurement"], per_frame)
    agent.update(records_per_frame=per_frame, key_interval=key_interval, **link)
    _, to_raw = target_column(codec, config["target"])
    predictors = {
        "": ChangePredictor.load(run / PREDICTOR_DIR / "decoded", to_raw),
        "raw_": ChangePredictor.load(run / PREDICTOR_DIR / "raw", to_raw),
    }
    recon = np.concatenate(recons)
    result: dict[str, Any] = {
        "codec": "temporal",
        "rows": len(recon),
        "sessions": len(sessions),
        "split": split,
        "L": codec.L,
        "K": codec.K,
        "lossless": codec.lossless,
        **_fidelity(codec, sessions, recon),
        **rate,
        "edge_cloud_agree": agree and agent_agree,
        "agent": agent,
        **_target(codec, predictors, sessions, agent_recons, horizon),
        **_target_error(codec, sessions, recons, target_name),
        "target": config["target"],
        "horizon": horizon,
    }
    log.info("evaluated %s on %d rows (%s): snr %.2f dB", run, len(recon), split, result["snr_db"])
    write_json(run / EVALUATION_FILE, {**result, "data": str(Path(data).resolve())})
    return result
