"""A model bundle: one model's manifest, encoder and signature, as the bytes the cloud
publishes (retained) on ``sparsetel/v1/{group}/MODEL/{model_ref}`` and the edge fetches.

Layout (integers big-endian)::

    magic  b"STMB"          4 bytes
    version                 u8   (BUNDLE_VERSION)
    manifest length         u32, then the manifest JSON (UTF-8)
    signature length        u16, then the signature (Ed25519: 64 bytes; 0 = unsigned)
    encoder length          u32, then the encoder: the ONNX graph, or a temporal codec's
                            codec.json (`encoder_file` names the file it is in a run)

The signature covers `signed_message(manifest_bytes)`: a context string and the manifest's
exact bytes. The manifest names the encoder's sha256, so a valid signature vouches for the
encoder too once its hash is checked. The encoder slot holds the file whose sha256 is the
manifest's `model_sha256`: ``encoder.onnx`` for a memoryless ONNX encoder, ``codec.json`` for
a temporal codec (``extra["codec"] == "temporal"``); the edge writes it back under that name.
Signing and verifying need the `cryptography` package and live in `cloud.fleet.keys` and
`edge.updater`; this module only packs and unpacks bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .errors import ModelMismatchError
from .manifest import ModelManifest
from .rundir import CODEC_FILE, ENCODER_FILE

__all__ = [
    "BUNDLE_VERSION",
    "MAGIC",
    "MAX_BUNDLE_BYTES",
    "Bundle",
    "encoder_file",
    "pack_bundle",
    "signed_message",
    "unpack_bundle",
]

MAGIC = b"STMB"
BUNDLE_VERSION = 1
# 1.6 MB for the default L=4, K=128 codec, 9 MB for L=8, K=512. The shipped brokers refuse
# packets over 16 MiB (max_packet_size); 64 KiB are left for the MQTT header and topic.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024 - 64 * 1024
SIGNATURE_CONTEXT = b"sparsetel model bundle v1\x00"
_HEAD = struct.Struct(">4sBI")


def encoder_file(manifest: ModelManifest) -> str:
    """The run-directory file a bundle's encoder slot holds for the model `manifest`
    describes: ``codec.json`` for a temporal codec, else ``encoder.onnx``."""
    return CODEC_FILE if manifest.extra.get("codec") == "temporal" else ENCODER_FILE


def signed_message(manifest_bytes: bytes) -> bytes:
    """The bytes a bundle's signature is over: a fixed context, then the manifest."""
    return SIGNATURE_CONTEXT + manifest_bytes


@dataclass(frozen=True)
class Bundle:
    """The three parts of a bundle, exactly as signed and hashed."""

    manifest_bytes: bytes
    signature: bytes
    encoder: bytes

    @property
    def manifest(self) -> ModelManifest:
        """The parsed manifest; ModelMismatchError when it is not a valid one."""
        try:
            text = self.manifest_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelMismatchError(f"bundle manifest is not UTF-8: {exc}") from exc
        return ModelManifest.from_json(text)

    @property
    def encoder_sha256(self) -> str:
        return hashlib.sha256(self.encoder).hexdigest()


def pack_bundle(bundle: Bundle) -> bytes:
    """The bundle's bytes; ValueError when a part does not fit its length field."""
    if len(bundle.signature) > 0xFFFF:
        raise ValueError("signature longer than 65535 bytes")
    out = b"".join(
        (
            _HEAD.pack(MAGIC, BUNDLE_VERSION, len(bundle.manifest_bytes)),
            bundle.manifest_bytes,
            struct.pack(">H", len(bundle.signature)),
            bundle.signature,
            struct.pack(">I", len(bundle.encoder)),
            bundle.encoder,
        )
    )
    if len(out) > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle of {len(out)} bytes exceeds {MAX_BUNDLE_BYTES}")
    return out


def unpack_bundle(data: bytes | bytearray | memoryview) -> Bundle:
    """Split a bundle into its parts; ModelMismatchError saying what is wrong with it."""
    buf = bytes(data)
    if len(buf) > MAX_BUNDLE_BYTES:
        raise ModelMismatchError(f"bundle of {len(buf)} bytes exceeds {MAX_BUNDLE_BYTES}")
    if len(buf) < _HEAD.size:
        raise ModelMismatchError(f"bundle truncated: {len(buf)} bytes")
    magic, version, manifest_len = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise ModelMismatchError(f"not a model bundle (magic {magic!r})")
    if version != BUNDLE_VERSION:
        raise ModelMismatchError(f"bundle version {version} is not supported")
    at = _HEAD.size
    manifest_bytes, at = _take(buf, at, manifest_len, "manifest")
    (sig_len,) = struct.unpack_from(">H", _take(buf, at, 2, "signature length")[0])
    signature, at = _take(buf, at + 2, sig_len, "signature")
    (enc_len,) = struct.unpack_from(">I", _take(buf, at, 4, "encoder length")[0])
    encoder, at = _take(buf, at + 4, enc_len, "encoder")
    if at != len(buf):
        raise ModelMismatchError(f"bundle has {len(buf) - at} trailing bytes")
    return Bundle(manifest_bytes, signature, encoder)


def _take(buf: bytes, at: int, n: int, what: str) -> tuple[bytes, int]:
    if at + n > len(buf):
        raise ModelMismatchError(f"bundle truncated in its {what}")
    return buf[at : at + n], at + n
