"""`sparsetel export` for a temporal-codec run: the manifest that names the codec and carries
its self-test.

The codec itself (RUN/codec.json, canonical JSON: the lattice, key words, priors and integer
entropy tables) is what the bundle ships and what `model_sha256` hashes. The manifest adds the
probe measurements (validation rows) and the exact payload the shipped encoder makes of them,
coded as one frame from a key measurement: an edge recomputes it before trusting the model,
so a codec that would code differently on that device never goes live.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ... import __version__
from ...shared.manifest import KpiNorm, ModelManifest, file_sha256
from ...shared.rundir import CODEC_FILE, MANIFEST_FILE, read_config, read_summary
from ...shared.temporalcodec import CODEC_FORMAT, TemporalCodec
from ...shared.temporalpayload import encode_payload

__all__ = ["export_temporal", "probe_payload"]

log = logging.getLogger(__name__)


def probe_payload(codec: TemporalCodec, probes: np.ndarray) -> bytes:
    """The payload of `probes` (raw, [n, D]) coded as one frame from a key measurement."""
    flags = [i == 0 for i in range(len(probes))]
    return encode_payload(codec, probes, flags, None)[0]


def export_temporal(run_dir: str | Path) -> ModelManifest:
    """Write RUN/manifest.json for a temporal-codec run; return it."""
    run = Path(run_dir)
    path = run / CODEC_FILE
    codec = TemporalCodec.from_json(path.read_text(encoding="utf-8"))
    config, summary = read_config(run), read_summary(run)
    probes = np.array(summary["probe_inputs"], dtype=np.float64).reshape(-1, codec.D)
    payload = probe_payload(codec, probes)
    manifest = ModelManifest(
        model_sha256=file_sha256(path),
        L=codec.L,
        K=max(codec.K, 2),
        kpis=codec.kpis,
        norms=tuple(
            KpiNorm(k, float(m), float(s), bool(lg))
            for k, m, s, lg in zip(codec.kpis, codec.mean, codec.std, codec.log, strict=True)
        ),
        target=str(config["target"]),
        horizon=int(config["horizon"]),
        window=int(config["window"]),
        opset=0,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        run=run.name,
        seed=int(config["seed"]),
        sparsetel_version=__version__,
        probe_inputs=tuple(tuple(float(v) for v in row) for row in probes),
        extra={
            "codec": "temporal",
            "codec_format": CODEC_FORMAT,
            "codec_file": CODEC_FILE,
            "probe_payload": payload.hex(),
            "key_words": len(codec.keys),
            "sigma2": codec.sigma2,
        },
    )
    manifest.validate()
    manifest.save(run / MANIFEST_FILE)
    log.info("exported %s (sha256 %s)", path, manifest.model_sha256[:16])
    return manifest
