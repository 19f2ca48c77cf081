"""Model updates on the edge: fetch a signed bundle, check it every way, hand it to the agent,
and keep the previous model ready to go back to.

A ``deploy`` command on NCMD (`sparsetel.shared.commands`) names a model; the updater thread
fetches its bundle, retained on ``.../MODEL/{model_ref}``, and refuses it (step ``rejected``,
the running model untouched) unless, in this order:

1. the agent has a trusted public key (``--trust-key``) and the bundle carries an Ed25519
   signature by it over its manifest;
2. the manifest is the model the command named, and the encoder's sha256 is the manifest's;
3. the model loads (`edge.models.load_encoder`): onnxruntime takes the graph and it has the
   encoder's inputs and outputs, or the temporal codec (``codec.json``) parses and matches
   the manifest;
4. its KPI schema is the source's, and it reproduces the manifest's probe codes, or for a
   temporal codec the probe payload byte for byte (self-test).

Then it reports ``verified`` and stages the encoder (`edge.modelslots.ModelSlot`); the agent's
frame loop switches between two frames (no measurement is dropped: a batch is encoded whole
by one model), publishes a fresh birth naming the new model, and reports ``switched``. If
the new model fails within its first `probation_frames` frames, the agent goes back to the
previous one, re-encodes the batch with it and reports ``rolled_back``. A ``rollback``
command switches to the previous model the same way.

Accepted bundles are kept under ``state_dir/models/{model_ref}/``; ``state_dir/models/
active.json`` records the running and the previous model, so a restarted agent runs the model
it was last switched to, as long as it was started with the same ``--model`` (a different
``--model`` is the operator's choice and wins).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..shared.bundle import Bundle, encoder_file, signed_message, unpack_bundle
from ..shared.commands import DeployReport, Step
from ..shared.errors import ConfigError, ModelMismatchError
from ..shared.rundir import ENCODER_FILE, MANIFEST_FILE
from ..shared.topics import model_topic
from .models import Encoder, load_encoder

__all__ = ["SIGNATURE_FILE", "ActiveModels", "ModelStore", "Staged", "Updater", "load_trust_key"]

log = logging.getLogger(__name__)

MODELS_DIR = "models"
ACTIVE_FILE = "active.json"
SIGNATURE_FILE = "manifest.sig"
MAX_WAITING = 16  # deployment commands queued at most; more are refused


def load_trust_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key deployments must be signed with; ConfigError when unusable."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key="trust_key") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}", key="trust_key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key", key="trust_key")
    return key


@dataclass(frozen=True)
class ActiveModels:
    """``active.json``: the model running now and the one before it (run directories), and
    the ``--model`` the agent was started with when they were recorded."""

    base: str
    current: str
    previous: str | None


class ModelStore:
    """Accepted bundles on disk and the record of which one runs."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / MODELS_DIR

    def save(self, bundle: Bundle, model_ref: str, encoder_name: str = ENCODER_FILE) -> Path:
        """Write the bundle as a run directory (encoder, manifest, signature); its path. The
        encoder goes under `encoder_name`, the name its kind has in a run (``encoder.onnx`` or
        ``codec.json``: `shared.bundle.encoder_file` of the bundle's manifest).

        Written to a temporary directory and renamed, so a crash never leaves half a model."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / model_ref
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_ref}-", dir=self.root))
        try:
            (tmp / encoder_name).write_bytes(bundle.encoder)
            (tmp / MANIFEST_FILE).write_bytes(bundle.manifest_bytes)
            (tmp / SIGNATURE_FILE).write_bytes(bundle.signature)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def discard(self, run_dir: Path) -> None:
        """Remove a stored model that failed its checks (never one outside the store)."""
        if run_dir.parent == self.root:
            shutil.rmtree(run_dir, ignore_errors=True)

    def read_active(self) -> ActiveModels | None:
        path = self.root / ACTIVE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return ActiveModels(str(data["base"]), str(data["current"]), data.get("previous"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None

    def write_active(self, active: ActiveModels) -> None:
        """Record the running model atomically (temporary file, fsync, rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ACTIVE_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(active.__dict__, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


@dataclass(frozen=True)
class Staged:
    """An encoder the frame loop should switch to, and why ("deploy" or "rollback")."""

    encoder: Encoder
    deployment: str
    kind: str


class Link(Protocol):
    """What the updater needs of the MQTT side (`edge.publisher.Publisher`)."""

    def fetch(self, topic: str, timeout: float) -> bytes | None: ...

    def publish_report(self, payload: bytes) -> bool: ...


class Updater:
    """The deployment thread of one agent: takes commands, checks bundles, stages encoders.

    `current()` gives the running encoder; `stage(Staged)` hands one to the frame loop, which
    calls `switched` once it runs it. `kpis` are the source's KPIs, which a model must take.
    """

    def __init__(
        self,
        *,
        group: str,
        edge: str,
        kpis: Sequence[str],
        store: ModelStore,
        trust_key: Ed25519PublicKey | None,
        link: Link,
        current: Callable[[], Encoder],
        previous: Callable[[], Encoder | None],
        stage: Callable[[Staged], None],
        fetch_timeout_s: float = 30.0,
    ) -> None:
        self.group, self.edge, self.kpis = group, edge, tuple(kpis)
        self.store = store
        self.trust_key = trust_key
        self.link = link
        self._current, self._previous, self._stage = current, previous, stage
        self.fetch_timeout_s = fetch_timeout_s
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=MAX_WAITING)

    def submit(self, command: dict[str, Any]) -> None:
        """Queue a command (from paho's thread: never blocks; a flood is refused, reported)."""
        try:
            self.commands.put_nowait(command)
        except queue.Full:
            log.warning("deployment command dropped: %s commands are waiting", MAX_WAITING)

    def run(self, stopping: threading.Event) -> None:
        """Thread body: handle commands one at a time until `stopping`."""
        while not stopping.is_set():
            try:
                command = self.commands.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(command)
            except Exception as exc:  # an update must never take the agent down
                log.exception("deployment command failed")
                self.report(str(command.get("deployment", "?")), "rejected", None, str(exc))

    def handle(self, command: dict[str, Any]) -> None:
        kind = command.get("command")
        deployment = str(command.get("deployment", "unknown"))
        if kind == "deploy":
            self.deploy(deployment, command["model_ref"], command["model_sha256"])
        elif kind == "rollback":
            self.rollback(deployment)
        else:
            log.warning("NCMD refused: %s", command.get("reason", kind))
            self.report(deployment, "rejected", None, f"invalid command: {command.get('reason')}")

    def deploy(self, deployment: str, model_ref: str, model_sha256: str) -> None:
        self.report(deployment, "received", model_sha256)
        if model_sha256 == self._current().model_sha256:
            self.report(deployment, "switched", model_sha256, "already running this model")
            return
        try:
            encoder = self._verify(model_ref, model_sha256)
        except ModelMismatchError as exc:
            log.error("deployment %s of %s rejected: %s", deployment, model_ref, exc)
            self.report(deployment, "rejected", model_sha256, str(exc))
            return
        self.report(deployment, "verified", model_sha256)
        self._stage(Staged(encoder, deployment, "deploy"))

    def rollback(self, deployment: str) -> None:
        self.report(deployment, "received", None)
        previous = self._previous()
        if previous is None:
            self.report(deployment, "failed", None, "no previous model to roll back to")
            return
        self._stage(Staged(previous, deployment, "rollback"))

    def _verify(self, model_ref: str, model_sha256: str) -> Encoder:
        """Fetch, check and load the bundle; ModelMismatchError saying which check failed."""
        if self.trust_key is None:
            raise ModelMismatchError("this agent has no --trust-key: it accepts no deployment")
        payload = self.link.fetch(model_topic(self.group, model_ref), self.fetch_timeout_s)
        if payload is None:
            raise ModelMismatchError(
                f"no bundle on the MODEL topic of {model_ref} within {self.fetch_timeout_s:g} s"
            )
        bundle = unpack_bundle(payload)
        if not bundle.signature:
            raise ModelMismatchError("the bundle is unsigned")
        try:
            self.trust_key.verify(bundle.signature, signed_message(bundle.manifest_bytes))
        except InvalidSignature:
            raise ModelMismatchError("bad signature: not signed by the trusted key") from None
        manifest = bundle.manifest
        if manifest.model_sha256 != model_sha256:
            raise ModelMismatchError(
                f"the bundle holds model {manifest.model_sha256[:16]}, "
                f"the command named {model_sha256[:16]}"
            )
        if bundle.encoder_sha256 != manifest.model_sha256:
            raise ModelMismatchError(
                f"encoder sha256 {bundle.encoder_sha256[:16]} is not the manifest's "
                f"{manifest.model_sha256[:16]}"
            )
        run_dir = self.store.save(bundle, model_ref, encoder_file(manifest))
        try:
            encoder = load_encoder(run_dir)  # hash and graph signature again, from disk
            encoder.check_schema(self.kpis)
            encoder.self_test()
        except ModelMismatchError:
            self.store.discard(run_dir)
            raise
        return encoder

    def switched(self, staged: Staged, previous: Encoder) -> None:
        """The frame loop runs `staged.encoder` now, in place of `previous`: report it."""
        step: Step = "switched" if staged.kind == "deploy" else "rolled_back"
        self.report(
            staged.deployment, step, staged.encoder.model_sha256, previous=previous.model_sha256
        )

    def report(
        self,
        deployment: str,
        step: Step,
        model_sha256: str | None,
        reason: str | None = None,
        previous: str | None = None,
    ) -> None:
        """Publish one DEPLOY report (QoS 1) and keep it."""
        report = DeployReport(
            deployment=deployment,
            edge=self.edge,
            group=self.group,
            step=step,
            model_sha256=model_sha256,
            previous_sha256=previous if previous is not None else self._current().model_sha256,
            reason=reason,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        log.info("deployment %s: %s%s", deployment, step, f" ({reason})" if reason else "")
        self.link.publish_report(report.to_json())
