"""The fake model and the frames the ingest tests feed the decoder with.

`FakeCodec` stands for a trained model whose outputs are easy to predict; `data_frame` and
`audited_frame` are DATA payloads of the edge `EDGE` in group `GROUP` for it. `SummingCodec`
and `recent_frame` are the broker tests' pair: another model, frames timed an hour ago.
`temporal_frames`: version 3 frames of a temporal-codec run, as an agent codes them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sparsetel.shared.chainframe import ChainHead, chain_frame, encode_chain_frame
from sparsetel.shared.manifest import KpiNorm, ModelManifest
from sparsetel.shared.temporalcodec import ChainState, TemporalCodec
from sparsetel.shared.temporalpayload import encode_payload
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import Frame, Record, encode_frame

L, K, W, H = 3, 16, 3, 2
GROUP, EDGE = "g1", "e1"
TOPIC = data_topic(GROUP, EDGE)
T = 1_700_000_000_000  # in one minute bucket with the next 40 s


class FakeCodec:
    """A Decoder whose outputs are easy to predict.

    decode: [nnz, sum of indices, NaN]; counts: index histogram; predict: the first index of
    each window row as base-100 digits (window codes (1, 2, 3) -> 10203).
    """

    def __init__(self, sha: str = "ab" * 32, L: int = L, K: int = K, window: int = W) -> None:
        kpis = ("RSRP", "SNR", "CQI")
        self.manifest = ModelManifest(
            model_sha256=sha, L=L, K=K, kpis=kpis,
            norms=tuple(KpiNorm(k, 0.0, 1.0) for k in kpis),
            target="SNR", horizon=H, window=window, opset=17,
        )  # fmt: skip
        self.window = window
        self.horizon = H
        self.predicted: list[np.ndarray] = []

    def decode(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([[len(c), sum(c), math.nan] for c in codes], dtype=np.float32)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) / 10.0

    def counts(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(codes), self.manifest.K), np.float32)
        for i, c in enumerate(codes):
            np.add.at(out[i], list(c), 1.0)
        return out

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        assert count_windows.shape[1:] == (self.window, self.manifest.K)
        self.predicted.append(count_windows)
        first = count_windows.argmax(-1)  # [N, W]
        return (first * 100.0 ** np.arange(self.window - 1, -1, -1)).sum(-1)

    def predict_sequence(self, counts: np.ndarray) -> np.ndarray:
        windows = sliding_window_view(counts, self.window, axis=0).transpose(0, 2, 1)
        return self.predict(np.ascontiguousarray(windows))


REF = FakeCodec().manifest.model_ref


def data_frame(
    seq: int, codes: Sequence[Sequence[int]] = ((1,), (2,)), bd_seq: int = 0, **kw: object
) -> bytes:
    """Frame `seq` of `FakeCodec`'s model, one record a second from T + 10 s * seq; `kw`
    overrides any other field of the Frame."""
    t0 = T + 10_000 * seq
    records = tuple(Record(t0 + 1000 * i, tuple(c)) for i, c in enumerate(codes))
    args: dict[str, object] = {"model_ref": REF, "L": L, "K": K, "period_ms": 1000}
    args.update(kw)
    return encode_frame(Frame(bd_seq=bd_seq, seq=seq, records=records, **args))  # type: ignore[arg-type]


def audited_frame(seq: int, first: int, audits: dict[int, tuple[float, ...]]) -> bytes:
    """Frame `seq` of records `first`..`first + 2` at T + 1 s each, record k holding code
    k + 1 and the raw values `audits[k]` when there are some."""
    records = tuple(Record(T + 1000 * k, (k + 1,), audits.get(k)) for k in range(first, first + 3))
    return encode_frame(Frame(REF, 0, seq, L, K, 1000, records))


class SummingCodec:
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


# The broker tests' model and frame times: recent, inside serve's window for frame times.
MQTT_L, MQTT_K, MQTT_W = 4, 32, 2
MQTT_CODEC = SummingCodec(MQTT_L, MQTT_K, MQTT_W, sha="5e")
T0_MS = (int(time.time()) - 3600) * 1000


def recent_frame(
    seq: int, bd_seq: int = 0, n: int = 2, ref: bytes = MQTT_CODEC.manifest.model_ref
) -> bytes:
    """Frame `seq` of `MQTT_CODEC`'s model: `n` records a second apart from T0_MS on."""
    t0 = T0_MS + seq * n * 1000
    records = tuple(Record(t0 + 1000 * i, (i % MQTT_K, (seq + 3) % MQTT_K)) for i in range(n))
    codes = tuple(Record(r.t_ms, tuple(sorted(r.codes))) for r in records)
    return encode_frame(Frame(ref, bd_seq, seq, MQTT_L, MQTT_K, 1000, codes))


# Version 3 frames of a temporal-codec run (tests/quickrun.py::quick_temporal_run).


def temporal_rows(codec: TemporalCodec, n: int, seed: int = 0) -> np.ndarray:
    """`n` raw measurements ([n, D]) of the simulator's sessions in the codec's KPI order,
    a few values missing (NaN)."""
    from sparsetel.cloud.data.simulator import simulate_sessions

    frame = simulate_sessions(n_sessions=1, rows=max(n, 60), seed=seed)[0]
    x = frame[list(codec.kpis)].to_numpy(dtype=np.float64)[:n].copy()
    x[3::17, 1] = np.nan
    return x


def temporal_frames(
    run: Path,
    n_frames: int,
    per_frame: int = 2,
    key_interval: int = 6,
    bd_seq: int = 0,
    t0_ms: int | None = None,
    audit_every: int = 0,
    seed: int = 0,
) -> tuple[list[bytes], np.ndarray]:
    """The version 3 frames (bytes) an agent sends of `n_frames` * `per_frame` simulated
    measurements: chained, a key measurement every `key_interval` (a frame starting at one
    carries a ChainHead), one a second from `t0_ms` (default an hour ago); with
    `audit_every`, every such measurement also travels raw (FLAG_AUDIT). Also returns what
    the cloud must decode of them: raw units [n, D], NaN missing."""
    codec = TemporalCodec.from_json((run / "codec.json").read_text())
    ref = bytes.fromhex(json.loads((run / "manifest.json").read_text())["model_sha256"][:16])
    manifest_k = json.loads((run / "manifest.json").read_text())["K"]
    x = temporal_rows(codec, n_frames * per_frame, seed)
    t0 = T0_MS if t0_ms is None else t0_ms
    state: ChainState | None = None
    frames, recon = [], []
    for seq in range(n_frames):
        start = seq * per_frame
        part = x[start : start + per_frame]
        keys = [(start + i) % key_interval == 0 for i in range(per_frame)]
        payload, decoded = encode_payload(codec, part, keys, state if not keys[0] else None)
        recon.append(codec.to_raw(decoded.recon))
        times = [t0 + 1000 * (start + i) for i in range(per_frame)]
        head = ChainHead(ref, times[0], 1000, codec.L, manifest_k) if keys[0] else None
        audit = None
        if audit_every:
            audit = [
                tuple(float(v) for v in part[i]) if (start + i) % audit_every == 0 else None
                for i in range(per_frame)
            ]
        frame = chain_frame(
            bd_seq, seq, times, 1000, [i for i, k in enumerate(keys) if k], payload, head,
            None if head else times[0] - 1000, audit=audit,
        )  # fmt: skip
        frames.append(encode_chain_frame(frame))
        state = decoded.state
    return frames, np.concatenate(recon)
