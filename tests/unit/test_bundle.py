"""Model bundles: byte layout, round trips, every cut, and a named table of malformed input."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from sparsetel.shared.bundle import (
    BUNDLE_VERSION,
    MAGIC,
    MAX_BUNDLE_BYTES,
    Bundle,
    pack_bundle,
    signed_message,
    unpack_bundle,
)
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.rundir import ENCODER_FILE, MANIFEST_FILE
from tests.tinymodel import write_tiny_model

SMALL = Bundle(b'{"m":1}', bytes(range(64)), b"\x08\x01onnx")
SMALL_BYTES = (
    b"STMB\x01"
    + b"\x00\x00\x00\x07"
    + b'{"m":1}'
    + b"\x00\x40"
    + bytes(range(64))
    + b"\x00\x00\x00\x06"
    + b"\x08\x01onnx"
)


def _with(head: bytes = b"STMB", version: int = BUNDLE_VERSION) -> bytes:
    return head + bytes([version]) + SMALL_BYTES[5:]


MALFORMED = {
    "empty": (b"", "truncated"),
    "bad magic": (_with(head=b"STMX"), "not a model bundle"),
    "a wire frame, not a bundle": (b"ST\x01\x00" + SMALL_BYTES[4:], "not a model bundle"),
    "version 0": (_with(version=0), "version 0 is not supported"),
    "version 2": (_with(version=2), "version 2 is not supported"),
    "trailing byte": (SMALL_BYTES + b"\x00", "1 trailing bytes"),
    "manifest longer than the bundle": (
        b"STMB\x01" + struct.pack(">I", 2**32 - 1) + b"{}",
        "truncated in its manifest",
    ),
    "signature longer than the bundle": (
        b"STMB\x01\x00\x00\x00\x02{}\xff\xff" + bytes(10),
        "truncated in its signature",
    ),
    "encoder longer than the bundle": (SMALL_BYTES[:-7] + b"\x07" + b"\x08\x01onnx", "encoder"),
}


def test_pack_gives_the_documented_layout() -> None:
    assert pack_bundle(SMALL) == SMALL_BYTES
    assert SMALL_BYTES.startswith(MAGIC + bytes([BUNDLE_VERSION]))


@pytest.mark.parametrize(
    "bundle",
    [
        SMALL,
        Bundle(b"{}", b"", b""),  # unsigned, empty encoder
        Bundle(b"x" * 1000, b"s" * 0xFFFF, bytes(range(256)) * 100),
    ],
    ids=["small", "unsigned-empty", "largest-signature"],
)
def test_unpack_inverts_pack(bundle: Bundle) -> None:
    assert unpack_bundle(pack_bundle(bundle)) == bundle


@pytest.mark.parametrize("buffer", [bytes, bytearray, memoryview])
def test_unpack_accepts_any_byte_buffer_like_a_paho_payload(buffer: type) -> None:
    assert unpack_bundle(buffer(SMALL_BYTES)) == SMALL


def test_unpack_of_every_cut_raises_truncated() -> None:
    for n in range(len(SMALL_BYTES)):
        with pytest.raises(ModelMismatchError, match="truncated"):
            unpack_bundle(SMALL_BYTES[:n])


@pytest.mark.parametrize(
    ("cut", "part"),
    [
        (3, "truncated: 3 bytes"),  # inside the header
        (9 + 3, "in its manifest"),
        (9 + 7 + 1, "in its signature length"),
        (9 + 7 + 2 + 10, "in its signature"),
        (9 + 7 + 2 + 64 + 2, "in its encoder length"),
        (len(SMALL_BYTES) - 1, "in its encoder"),
    ],
)
def test_unpack_names_the_part_a_cut_falls_in(cut: int, part: str) -> None:
    with pytest.raises(ModelMismatchError, match=part):
        unpack_bundle(SMALL_BYTES[:cut])


@pytest.mark.parametrize(("data", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_unpack_rejects_malformed_bundle(data: bytes, message: str) -> None:
    with pytest.raises(ModelMismatchError, match=message):
        unpack_bundle(data)


def test_unpack_refuses_an_oversized_buffer_before_reading_it() -> None:
    with pytest.raises(ModelMismatchError, match="exceeds"):
        unpack_bundle(b"STMB" + bytes(MAX_BUNDLE_BYTES - 3))


def test_pack_refuses_what_the_length_fields_or_the_limit_cannot_hold() -> None:
    with pytest.raises(ValueError, match="signature longer"):
        pack_bundle(Bundle(b"{}", b"s" * 0x10000, b""))
    with pytest.raises(ValueError, match="exceeds"):
        pack_bundle(Bundle(b"{}", b"", bytes(MAX_BUNDLE_BYTES)))


def test_manifest_parses_the_exact_bytes_of_an_exported_model(tmp_path: Path) -> None:
    run = write_tiny_model(tmp_path / "run")
    bundle = Bundle((run / MANIFEST_FILE).read_bytes(), b"", (run / ENCODER_FILE).read_bytes())
    assert bundle.manifest.model_sha256 == bundle.encoder_sha256


@pytest.mark.parametrize(
    ("manifest_bytes", "message"),
    [
        (b'{"model_sha256": "\xff"}', "not UTF-8"),
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"manifest_version": 1}', "missing or has a bad field"),
        (b'{"manifest_version": 99}', "not supported"),
    ],
)
def test_manifest_refuses_what_is_not_a_valid_manifest(manifest_bytes: bytes, message: str) -> None:
    with pytest.raises(ModelMismatchError, match=message):
        _ = Bundle(manifest_bytes, b"", b"").manifest


def test_encoder_sha256_is_the_hash_of_the_encoder_bytes() -> None:
    assert SMALL.encoder_sha256 == hashlib.sha256(b"\x08\x01onnx").hexdigest()


def test_signed_message_binds_a_context_to_the_exact_manifest_bytes() -> None:
    message = signed_message(b'{"m":1}')
    assert message.endswith(b'{"m":1}') and message != b'{"m":1}'
    assert signed_message(b'{"m": 1}') != message
