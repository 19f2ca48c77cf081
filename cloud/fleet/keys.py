"""`sparsetel keygen` and model signing: the operator's Ed25519 key pair and signed bundles.

The operator holds the private key; every edge trusts the public half (`edge.updater.
load_trust_key`) and installs only a model whose manifest that key signed:

1. `keygen` writes the pair: the private key (PEM PKCS8, unencrypted) with mode 0600 from
   its first byte, the public key (PEM SubjectPublicKeyInfo) to copy to the edges;
2. `load_private_key` / `load_public_key` read them back, refusing anything but Ed25519;
3. `build_bundle` reads an exported run's ``manifest.json`` and its encoder (``encoder.onnx``,
   or ``codec.json`` for a temporal codec: `shared.bundle.encoder_file`) byte for byte,
   checks that the manifest names the encoder's sha256, and signs
   `shared.bundle.signed_message` of the manifest bytes, so the signature covers the
   encoder through its hash (the wire format is `sparsetel.shared.bundle`).

A key problem is a ConfigError and a model problem a ModelMismatchError, both raised before
anything reaches the broker.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ...shared.bundle import Bundle, encoder_file, signed_message
from ...shared.errors import ConfigError, ModelMismatchError
from ...shared.manifest import ModelManifest
from ...shared.rundir import MANIFEST_FILE

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "build_bundle",
    "keygen",
    "load_private_key",
    "load_public_key",
]

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "deploy_ed25519"
PUBLIC_KEY_FILE = "deploy_ed25519.pub"


# --------------------------------------------------------------------------- keys


def keygen(out_dir: Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into `out_dir`: (private key path, public key path).

    The private key (PEM PKCS8, unencrypted) is created with mode 0600, never readable by
    others even for a moment; the public key (PEM SubjectPublicKeyInfo) goes to the edges.
    ConfigError when a key is already there, unless `force`.
    """
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    existing = [str(p) for p in (private_path, public_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists: refusing to overwrite a key (use --force)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _create(private_path, private_pem, 0o600, replace=force)
        _create(public_path, public_pem, 0o644, replace=force)
    except FileExistsError as exc:
        raise ConfigError(f"{exc.filename} exists: refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write a key to {out_dir}: {exc.strerror}") from exc
    log.info("wrote deploy key pair %s and %s", private_path, public_path)
    return private_path, public_path


def _create(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Create `path` holding `data` with `mode` from its first byte (O_EXCL: never someone
    else's file or permissions). With `replace`, write a fresh file beside it and rename it."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
        if replace:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _read_key(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} key {path}: {exc.strerror}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 signing key in the PEM file `path`; ConfigError saying what is wrong."""
    data = _read_key(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("private key %s is readable by others: chmod 600 it", path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 verification key in the PEM file `path`; ConfigError saying what is wrong."""
    data = _read_key(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


# --------------------------------------------------------------------------- bundle


def build_bundle(run_dir: Path, private_key: Ed25519PrivateKey) -> Bundle:
    """The signed bundle of the exported model in `run_dir`, from its files' exact bytes: the
    manifest and the encoder (ONNX graph or temporal codec, `shared.bundle.encoder_file`).
    ModelMismatchError when a file is missing, the manifest is invalid or the encoder is not
    the one the manifest names."""
    manifest_bytes = _read_part(run_dir / MANIFEST_FILE)
    try:
        manifest = ModelManifest.from_json(manifest_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelMismatchError(f"{run_dir / MANIFEST_FILE} is not UTF-8: {exc}") from exc
    name = encoder_file(manifest)
    unsigned = Bundle(manifest_bytes, b"", _read_part(run_dir / name))
    if unsigned.encoder_sha256 != manifest.model_sha256:
        raise ModelMismatchError(
            f"{run_dir / name} has sha256 {unsigned.encoder_sha256[:16]}..., the "
            f"manifest names {manifest.model_sha256[:16]}...: export the run again"
        )
    signature = private_key.sign(signed_message(unsigned.manifest_bytes))
    return Bundle(unsigned.manifest_bytes, signature, unsigned.encoder)


def _read_part(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelMismatchError(f"cannot read {path}: {exc.strerror}") from exc
