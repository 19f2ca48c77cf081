"""`sparsetel keygen`, `deploy` and `rollback`: the cloud side of signed model deployment.

A deployment sends one exported model (a run folder with ``manifest.json`` and
``encoder.onnx``) to some edges of a group:

1. the bundle (`sparsetel.shared.bundle`) is built from the files' exact bytes and signed
   with the operator's Ed25519 key, whose public half the edges trust;
2. the edges of the group that are online are found from their retained STATE births;
3. the targets are chosen: named ones, a deterministic canary share, or all online edges;
4. the bundle is published retained on ``.../MODEL/{model_ref}`` and each target gets a
   deploy command on its NCMD topic (QoS 1, after the DEPLOY reports are subscribed to);
5. the reports are collected until every target has sent a final step or time runs out.

A rollback sends a rollback command and collects the reports the same way. paho's network
thread only queues messages; everything else runs in the calling thread. The client speaks
MQTT 3.1.1 with a clean session and an id of its own (a configured `client_id` belongs to the
decoder service and is not reused, so a deployment never kicks the service off the broker).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import secrets
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.shared.bundle import Bundle, pack_bundle, signed_message
from sparsetel.shared.config import BrokerConfig, load_config
from sparsetel.shared.deployment import (
    DeployReport,
    deploy_command,
    parse_report,
    rollback_command,
)
from sparsetel.shared.errors import ConfigError, ModelMismatchError, SparsetelError, WireError
from sparsetel.shared.manifest import ENCODER_FILE, MANIFEST_FILE
from sparsetel.shared.state import parse_state
from sparsetel.shared.topics import (
    deploy_subscription,
    model_topic,
    ncmd_topic,
    parse_topic,
    state_subscription,
    validate_id,
)

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "BrokerLink",
    "DeployConfig",
    "broker_from_flags",
    "build_bundle",
    "choose_targets",
    "collect_reports",
    "deploy",
    "discover_edges",
    "keygen",
    "load_private_key",
    "load_public_key",
    "new_deployment_id",
    "rollback",
]

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "deploy_ed25519"
PUBLIC_KEY_FILE = "deploy_ed25519.pub"
CONNECT_TIMEOUT_S = 10.0
DISCOVERY_LIMIT_S = 5.0  # retained births arrive at once; never wait longer than this for them


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
    """The signed bundle of the exported model in `run_dir`, from its files' exact bytes.
    ModelMismatchError when a file is missing, the manifest is invalid or the encoder is not
    the one the manifest names."""
    parts = {}
    for name in (MANIFEST_FILE, ENCODER_FILE):
        try:
            parts[name] = (run_dir / name).read_bytes()
        except OSError as exc:
            raise ModelMismatchError(f"cannot read {run_dir / name}: {exc.strerror}") from exc
    unsigned = Bundle(parts[MANIFEST_FILE], b"", parts[ENCODER_FILE])
    manifest = unsigned.manifest
    if unsigned.encoder_sha256 != manifest.model_sha256:
        raise ModelMismatchError(
            f"{run_dir / ENCODER_FILE} has sha256 {unsigned.encoder_sha256[:16]}..., the "
            f"manifest names {manifest.model_sha256[:16]}...: export the run again"
        )
    signature = private_key.sign(signed_message(unsigned.manifest_bytes))
    return Bundle(unsigned.manifest_bytes, signature, unsigned.encoder)


def new_deployment_id(now: datetime | None = None) -> str:
    """A fresh deployment id, ``d-<UTC yyyymmddThhmmss>-<6 hex>``."""
    now = now if now is not None else datetime.now(UTC)
    deployment = f"d-{now.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    validate_id(deployment)
    return deployment


# --------------------------------------------------------------------------- targets


def _check_selection(edges: Sequence[str] | None, canary: float | None) -> None:
    if edges is not None and canary is not None:
        raise ConfigError("name edges or give a canary share, not both")
    if canary is not None and not 0 < canary <= 1:
        raise ConfigError(f"must be in (0, 1], got {canary}", key="canary")
    if edges is not None:
        if not edges:
            raise ConfigError("names no edge", key="edges")
        for edge in edges:
            try:
                validate_id(edge)
            except ValueError as exc:
                raise ConfigError(str(exc), key="edges") from exc


def choose_targets(
    online: Sequence[str],
    edges: Sequence[str] | None,
    canary: float | None,
    deployment_key: str,
    *,
    group: str = "",
) -> list[str]:
    """The edges to command, sorted: the named `edges` (online or not: an unknown one is
    warned about), else ceil(`canary` * n) of the n `online` edges, else all of them.

    A canary orders the online edges by sha256(`deployment_key` + edge), so deploying the
    same model (key: its sha256) again picks the same edges. ConfigError for both `edges`
    and `canary`, a canary outside (0, 1], or nothing to target.
    """
    _check_selection(edges, canary)
    if edges is not None:
        chosen = sorted(set(edges))
        for edge in sorted(set(chosen) - set(online)):
            log.warning("edge %s has no online birth in the group: commanding it anyway", edge)
        return chosen
    if not online:
        raise ConfigError(f"no online edge in group {group or '?'} (no retained birth seen)")
    if canary is None:
        return sorted(set(online))
    ranked = sorted(set(online), key=lambda edge: _rank(deployment_key, edge))
    # a tolerance so that 0.3 of 10 is 3, not ceil(3.0000000000000004)
    n = max(1, math.ceil(canary * len(ranked) - 1e-9))
    return sorted(ranked[:n])


def _rank(key: str, edge: str) -> bytes:
    return hashlib.sha256(f"{key}{edge}".encode()).digest()


# --------------------------------------------------------------------------- MQTT


class BrokerLink:
    """One paho client for a deployment. paho's thread only queues what arrives (`next`
    hands it out) and resubscribes after a reconnect; waiting happens in the caller."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._filters: list[str] = []
        self._subacks: dict[int, list[str]] = {}  # SUBACK mid -> the refused reason codes
        self._lock = threading.Condition()
        self._connected = threading.Event()
        self._refused = ""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sparsetel-deploy-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(ca_certs=str(broker.tls_ca) if broker.tls_ca else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and start paho's thread; SparsetelError with the reason when it fails."""
        b = self.broker
        try:
            self.client.connect(b.host, b.port, keepalive=b.keepalive)
        except (OSError, ValueError) as exc:
            raise SparsetelError(f"cannot connect to broker {b.url}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self.close()
                raise SparsetelError(f"broker {b.url}: {self._refused or 'no CONNACK'}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic_filter: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Subscribe (QoS 1) and wait for the broker to grant it."""
        with self._lock:
            self._filters.append(topic_filter)
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise SparsetelError(f"cannot subscribe to {topic_filter}: {mqtt.error_string(rc)}")
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._subacks, timeout):
                raise SparsetelError(f"no SUBACK for {topic_filter} within {timeout} s")
            refused = self._subacks.pop(mid)
        if refused:
            raise SparsetelError(f"subscription to {topic_filter} refused ({refused}): check ACL")

    def publish(
        self, messages: Sequence[tuple[str, bytes, bool]], timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        """Publish (topic, payload, retain) messages at QoS 1, then wait for every PUBACK."""
        sent = [(topic, self.client.publish(topic, p, qos=1, retain=r)) for topic, p, r in messages]
        deadline = time.monotonic() + timeout
        for topic, info in sent:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as exc:
                raise SparsetelError(f"cannot publish to {topic}: {exc}") from exc
            if not info.is_published():
                raise SparsetelError(f"no PUBACK for {topic} within {timeout} s")

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next (topic, payload) received, or None after `timeout` seconds (at once when
        `timeout` <= 0, so loops against a deadline end even while messages keep coming)."""
        if timeout <= 0:
            return None
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    # paho's thread: queue, record, return; never block or raise

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._refused = f"connection refused: {rc}"
            return
        with self._lock:
            filters = list(self._filters)
        if filters:  # a reconnect: the clean session lost them
            client.subscribe([(f, 1) for f in filters])
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if rc.is_failure:
            log.warning("lost the broker (%s); paho reconnects", rc)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._lock:
            self._subacks[mid] = [str(c) for c in codes if c.is_failure]
            self._lock.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))


@contextmanager
def _connected(broker: BrokerConfig) -> Iterator[BrokerLink]:
    link = BrokerLink(broker)
    link.connect()
    try:
        yield link
    finally:
        link.close()


# --------------------------------------------------------------------------- discovery


def discover_edges(
    link: BrokerLink, group: str, settle_s: float = 1.0, limit_s: float = DISCOVERY_LIMIT_S
) -> list[str]:
    """The online edges of `group`, sorted, from the retained births on its STATE topics:
    gathered until none came for `settle_s` seconds, `limit_s` at most. Other messages that
    arrive meanwhile are dropped."""
    link.subscribe(state_subscription(group))
    online: dict[str, bool] = {}
    last = start = time.monotonic()
    while True:
        item = link.next(min(last + settle_s, start + max(limit_s, settle_s)) - time.monotonic())
        if item is None:
            break
        seen = _edge_state(group, *item)
        if seen is not None:
            online[seen[0]] = seen[1]
            last = time.monotonic()
    edges = sorted(edge for edge, up in online.items() if up)
    log.info("group %s: %d edge(s) online, %d offline", group, len(edges), len(online) - len(edges))
    return edges


def _edge_state(group: str, topic: str, payload: bytes) -> tuple[str, bool] | None:
    """(edge, online) of a STATE message of `group`; None for anything else."""
    try:
        parts = parse_topic(topic)
    except WireError:
        return None
    if parts.kind != "STATE" or parts.group != group:
        return None
    if not payload:  # a retained birth being cleared
        return parts.edge, False
    try:
        state = parse_state(payload)
    except WireError as exc:
        log.warning("ignoring the STATE of edge %s: %s", parts.edge, exc)
        return None
    if state.edge != parts.edge:
        log.warning("ignoring a STATE on %s that names edge %s", topic, state.edge)
        return None
    return parts.edge, state.online


# --------------------------------------------------------------------------- reports


def collect_reports(
    link: BrokerLink, group: str, deployment: str, targets: Sequence[str], timeout_s: float
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Wait until every target reported a final step of `deployment`, or `timeout_s` passed.

    Returns {edge: {"step": last step or None, "reason", "steps": every step in order}} and
    the sorted targets without a final step. Reports of other deployments are skipped,
    malformed ones logged and skipped.
    """
    results: dict[str, dict[str, Any]] = {
        edge: {"step": None, "reason": None, "steps": []} for edge in targets
    }
    pending = set(targets)
    deadline = time.monotonic() + timeout_s
    while pending:
        item = link.next(deadline - time.monotonic())
        if item is None:
            break
        report = _report_of(group, deployment, *item)
        if report is None:
            continue
        if report.edge not in results:
            log.warning("edge %s reported on %s but was not a target", report.edge, deployment)
            continue
        entry = results[report.edge]
        entry.update(step=report.step, reason=report.reason)
        entry["steps"].append(report.step)
        log.info("edge %s: %s (%s)", report.edge, report.step, report.reason or "-")
        if report.final:
            pending.discard(report.edge)
    return results, sorted(pending)


def _report_of(group: str, deployment: str, topic: str, payload: bytes) -> DeployReport | None:
    """The DeployReport of `deployment` in a DEPLOY message of `group`, else None."""
    try:
        parts = parse_topic(topic)
    except WireError:
        return None
    if parts.kind != "DEPLOY" or parts.group != group:
        return None
    try:
        report = parse_report(payload)
    except ValueError as exc:
        log.warning("ignoring a malformed report from edge %s: %s", parts.edge, exc)
        return None
    if report.deployment != deployment:
        return None
    if report.edge != parts.edge:
        log.warning("ignoring a report on %s that names edge %s", topic, report.edge)
        return None
    return report


def _outcome(
    targets: list[str],
    online: list[str],
    results: dict[str, dict[str, Any]],
    timed_out: list[str],
    success: str,
) -> dict[str, Any]:
    finals = [r["step"] for edge, r in results.items() if edge not in timed_out]
    known = set(online)
    return {
        "targets": targets,
        "unknown": [edge for edge in targets if edge not in known],
        "results": results,
        success: sum(step == success for step in finals),
        "failed": sum(step != success for step in finals),
        "timed_out": timed_out,
    }


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class DeployConfig:
    """What ``--config`` holds for deploy and rollback: the [broker] table, as for serve."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)


def broker_from_flags(args: Any) -> BrokerConfig:
    """The broker of ``sparsetel deploy`` / ``rollback``: defaults < ``--config`` TOML <
    environment (SPARSETEL_MQTT_USERNAME / _PASSWORD) < ``--broker``."""
    overrides = {"broker": {"url": getattr(args, "broker", None)}}
    cfg = load_config(DeployConfig, getattr(args, "config", None), "SPARSETEL_", overrides)
    return cfg.broker


def _check_run(group: str, timeout_s: float) -> None:
    try:
        validate_id(group)
    except ValueError as exc:
        raise ConfigError(str(exc), key="group") from exc
    if not 0 < timeout_s < math.inf:
        raise ConfigError(f"must be > 0 seconds, got {timeout_s}", key="timeout")


def deploy(
    broker: BrokerConfig,
    group: str,
    run_dir: Path,
    key_path: Path,
    edges: Sequence[str] | None = None,
    canary: float | None = None,
    timeout_s: float = 60.0,
    *,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """Deploy the exported model in `run_dir`, signed with the key at `key_path`, to edges
    of `group` (see `choose_targets`); wait up to `timeout_s` for their final reports.

    Returns a JSON-ready summary: deployment, group, model_sha256, model_ref, targets,
    unknown (targets with no online birth), results per edge, switched, failed, timed_out,
    bundle_bytes. ConfigError before anything is sent for bad arguments or keys,
    ModelMismatchError for a bad model, SparsetelError when the broker fails us.
    """
    _check_run(group, timeout_s)
    _check_selection(edges, canary)
    bundle = build_bundle(run_dir, load_private_key(key_path))
    try:
        payload = pack_bundle(bundle)
    except ValueError as exc:
        raise ModelMismatchError(f"cannot bundle {run_dir}: {exc}") from exc
    manifest, deployment = bundle.manifest, new_deployment_id()
    ref = manifest.model_ref.hex()
    with _connected(broker) as link:
        link.subscribe(deploy_subscription(group))  # before any command: miss no report
        online = discover_edges(link, group, settle_s)
        targets = choose_targets(online, edges, canary, manifest.model_sha256, group=group)
        link.publish([(model_topic(group, ref), payload, True)])
        command = deploy_command(deployment, ref, manifest.model_sha256)
        link.publish([(ncmd_topic(group, edge), command, False) for edge in targets])
        log.info("deployment %s: model %s sent to %d edge(s)", deployment, ref, len(targets))
        results, timed_out = collect_reports(link, group, deployment, targets, timeout_s)
    return {
        "deployment": deployment,
        "group": group,
        "model_sha256": manifest.model_sha256,
        "model_ref": ref,
        **_outcome(targets, online, results, timed_out, "switched"),
        "bundle_bytes": len(payload),
    }


def rollback(
    broker: BrokerConfig,
    group: str,
    edges: Sequence[str] | None = None,
    timeout_s: float = 60.0,
    *,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """Send the named `edges` (default: every online edge of `group`) back to their previous
    model; wait up to `timeout_s` for their reports. Returns deployment, group, targets,
    unknown, results, rolled_back, failed, timed_out (see `deploy`)."""
    _check_run(group, timeout_s)
    _check_selection(edges, None)
    deployment = new_deployment_id()
    with _connected(broker) as link:
        link.subscribe(deploy_subscription(group))
        online = discover_edges(link, group, settle_s)
        targets = choose_targets(online, edges, None, "", group=group)
        command = rollback_command(deployment)
        link.publish([(ncmd_topic(group, edge), command, False) for edge in targets])
        log.info("rollback %s sent to %d edge(s)", deployment, len(targets))
        results, timed_out = collect_reports(link, group, deployment, targets, timeout_s)
    return {
        "deployment": deployment,
        "group": group,
        **_outcome(targets, online, results, timed_out, "rolled_back"),
    }
