"""The lossless float baselines: raw float32, float32 through zstd, and Gorilla XOR coding.

Every class satisfies `method.Method`. They code raw values (`TrainData.to_raw`, NaN where
missing) as float32, as an edge without the model would publish them, and reproduce them
bit-exactly, NaN positions included; their reconstruction is the decoded raw frame mapped
back with `from_raw` (0 where missing). `Lossless` holds that frame logic for them and for
`gridcode.GridLossless`; `not_fitted` and the zstd helpers serve the other baselines too.
"""

from __future__ import annotations

import numpy as np
import zstandard

from . import gorilla
from .method import Coded, TrainData

__all__ = [
    "Float32",
    "Float32Zstd",
    "Gorilla",
    "Lossless",
    "not_fitted",
    "zstd_compress",
    "zstd_decompress",
]

ZSTD_LEVEL = 19


def zstd_compress(payload: bytes) -> bytes:
    """`payload` through zstd at ZSTD_LEVEL, no dictionary: a whole frame, header included."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)


def zstd_decompress(payload: bytes) -> bytes:
    """Inverse of `zstd_compress`."""
    return zstandard.ZstdDecompressor().decompress(payload)


def not_fitted(name: str) -> RuntimeError:
    """The error of method `name` asked to code a frame before `fit`."""
    return RuntimeError(f"{name}.code_frame called before fit")


class Lossless:
    """Shared frame logic of the lossless codecs: subclasses pack and unpack raw float32."""

    family = ""
    setting = "lossless"
    L: int | None = None
    lossy = False
    seeded = False

    def __init__(self) -> None:
        self._train: TrainData | None = None

    def fit(self, train: TrainData, seed: int) -> None:
        self._train = train

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        """Raw frame (float32, [n, D]) -> the payload and its bits."""
        raise NotImplementedError

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        """The payload -> the raw frame (float32, shape: [n, D])."""
        raise NotImplementedError

    def round_trip(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The raw frame sent (float32, [n, D], NaN where missing), the raw frame decoded
        from the payload (float32, [n, D]) and the payload bits."""
        if self._train is None:
            raise not_fitted(type(self).__name__)
        z = np.where(mask, np.asarray(x, dtype=np.float64), np.nan)
        raw = np.asarray(self._train.to_raw(z), dtype=np.float32)
        raw = np.where(mask, raw, np.float32(np.nan)).astype(np.float32)
        payload, bits = self._pack(raw)
        return raw, self._unpack(payload, raw.shape), bits

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        _, back, bits = self.round_trip(x, mask)
        assert self._train is not None
        missing = np.isnan(back)
        z = self._train.from_raw(np.where(missing, 0.0, back.astype(np.float64)))
        return Coded(recon=np.where(missing, 0.0, z), bits=bits)


class Float32(Lossless):
    """Raw float32 values, row-major: 32 bits per KPI per measurement."""

    family = "float32"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        payload = raw.astype("<f4").tobytes()
        return payload, 8 * len(payload)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, bytes)
        return np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)


class Float32Zstd(Lossless):
    """zstd (level 19, no dictionary) over the frame's raw float32 bytes, column-major (each
    KPI's series contiguous); the bits are the whole compressor output, header included."""

    family = "float32-zstd"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        payload = zstd_compress(np.ascontiguousarray(raw.T).astype("<f4").tobytes())
        return payload, 8 * len(payload)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, bytes)
        cols = np.frombuffer(zstd_decompress(payload), dtype="<f4").reshape(shape[::-1])
        return cols.T.astype(np.float32)


class Gorilla(Lossless):
    """Gorilla XOR coding (`gorilla`) of each KPI's raw float32 series in the frame, KPIs in
    their fixed order; the bits are the sum of the columns' stream bits (no padding)."""

    family = "gorilla"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        # Each column's stream ends where its n-th value does, so on the wire the streams
        # go back to back without padding: the frame costs the sum of their bits.
        streams = [gorilla.encode(np.ascontiguousarray(raw[:, j])) for j in range(raw.shape[1])]
        return streams, sum(bits for _, bits in streams)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, list)
        cols = [gorilla.decode(data, shape[0], bits) for data, bits in payload]
        return np.stack(cols, axis=1) if cols else np.zeros(shape, dtype=np.float32)
