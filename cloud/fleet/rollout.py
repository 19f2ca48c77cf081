"""`sparsetel deploy` and `rollback`: the cloud side of signed model deployment.

A deployment sends one exported model (a run folder with ``manifest.json`` and
``encoder.onnx``) to some edges of a group:

1. the bundle is built from the files' exact bytes and signed with the operator's Ed25519
   key, whose public half the edges trust (`cloud.fleet.keys`, `sparsetel.shared.bundle`);
2. the edges of the group that are online are found from their retained STATE births
   (`cloud.fleet.client.discover_edges`);
3. the targets are chosen (`choose_targets`): named ones, a deterministic canary share, or
   all online edges;
4. the bundle is published retained on ``.../MODEL/{model_ref}`` and each target gets a
   deploy command on its NCMD topic (QoS 1, after the DEPLOY reports are subscribed to);
5. the reports are collected until every target has sent a final step or time runs out
   (`cloud.fleet.client.collect_reports`), and summed up per edge and in total.

A rollback sends a rollback command and collects the reports the same way. Bad arguments,
keys or models fail before anything is sent; the MQTT client itself is `cloud.fleet.client.
BrokerLink`, one per operation, closed when it ends.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...shared.bundle import pack_bundle
from ...shared.commands import deploy_command, rollback_command
from ...shared.config import BrokerConfig, load_config
from ...shared.errors import ConfigError, ModelMismatchError
from ...shared.topics import deploy_subscription, model_topic, ncmd_topic, validate_id
from .client import BrokerLink, collect_reports, discover_edges
from .keys import build_bundle, load_private_key

__all__ = [
    "DeployConfig",
    "broker_from_flags",
    "choose_targets",
    "deploy",
    "new_deployment_id",
    "rollback",
]

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- outcome


def _outcome(
    targets: list[str],
    online: list[str],
    results: dict[str, dict[str, Any]],
    timed_out: list[str],
    success: str,
) -> dict[str, Any]:
    """The summary of a rollout: targets, unknown ones, results, the count of `success`
    finals and of other finals, and the targets that timed out."""
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
    with BrokerLink(broker) as link:
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
    with BrokerLink(broker) as link:
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
