"""Random temporal codecs and streams, and a digest of what a codec codes: the same cases in
this process and in a child process that runs the codec's sources (tests/unit/test_native.py)."""

from __future__ import annotations

import hashlib

import numpy as np

from sparsetel.shared.temporalcodec import TemporalCodec, uniform_tables
from sparsetel.shared.temporalpayload import encode_payload, fitted, table_counts


def random_codec(
    rng: np.random.Generator,
    groups: tuple[tuple[int, ...], ...],
    L: int,
    sigma2: float,
    lossless: bool,
) -> TemporalCodec:
    """A codec of the KPIs in `groups` with random units (0.01..0.3), weights, steps (1..3)
    and three key words; uniform tables."""
    D = sum(len(g) for g in groups)
    return TemporalCodec(
        kpis=tuple(f"k{j}" for j in range(D)), L=L, clip=6.0, span=6.0, sigma2=sigma2,
        mean=np.zeros(D), std=np.ones(D), log=np.zeros(D, dtype=bool),
        unit=rng.uniform(0.01, 0.3, D), origin=np.zeros(D), weight=rng.uniform(0.5, 4.0, D),
        steps=rng.integers(1, 4, D), groups=groups, keys=rng.integers(-20, 20, (3, D)),
        lossless=lossless, **uniform_tables(D, groups, 3),
    )  # fmt: skip


def random_walks(
    rng: np.random.Generator, n: int, D: int, missing: float
) -> tuple[np.ndarray, list[bool]]:
    """n measurements of D random walks (jumps far past a digit's reach, within ±5.5, a share
    `missing` missing) and their key flags (the first, then about one in ten)."""
    x = np.cumsum(rng.normal(0, 0.3, (n, D)) * (rng.random((n, D)) < 0.1) * 20 + 0.01, axis=0)
    x = np.clip(x, -5.5, 5.5)
    x[rng.random((n, D)) < missing] = np.nan
    keys = [True] + [bool(k) for k in rng.random(n - 1) < 0.1]
    return x, keys


def random_codec_case(seed: int) -> tuple[TemporalCodec, np.ndarray, list[bool]]:
    """A random codec (1..6 KPIs in groups of 1..3, lossy or lossless, tables fitted on its
    own stream) and a stream of walks with jumps, gaps and keys."""
    rng = np.random.default_rng(seed)
    D = int(rng.integers(1, 7))
    order, groups, at = rng.permutation(D), [], 0
    while at < D:
        size = int(rng.integers(1, min(3, D - at) + 1))
        groups.append(tuple(sorted(int(j) for j in order[at : at + size])))
        at += size
    L, sigma2 = int(rng.integers(1, 5)), float(rng.choice([1e-6, 1e-3, 1e-1]))
    codec = random_codec(rng, tuple(groups), L, sigma2, lossless=seed % 3 == 0)
    x, keys = random_walks(rng, 60, D, 0.15)
    counts = table_counts(codec)
    encode_payload(codec, x, keys, None, counts)
    return fitted(codec, counts), x, keys


def coded_digests(seeds: range) -> list[str]:
    """Per case, the sha256 of its frames' payloads, codes, chain states and reconstructions
    (the tables fitted on the stream by the same encoder counting symbols), coded in frames
    of 1 to 9 measurements that continue each other."""
    out = []
    for seed in seeds:
        codec, x, keys = random_codec_case(seed)
        digest, state, at = hashlib.sha256(), None, 0
        while at < len(x):
            n = 1 + (at + seed) % 9
            payload, decoded = encode_payload(codec, x[at : at + n], keys[at : at + n], state)
            digest.update(payload + repr((decoded.codes, decoded.state)).encode())
            digest.update(np.nan_to_num(decoded.recon, nan=1e300).tobytes())
            state, at = decoded.state, at + n
        out.append(digest.hexdigest())
    return out
