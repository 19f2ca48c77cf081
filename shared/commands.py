"""Model deployment messages: the commands the cloud sends on NCMD and the reports edges send
on DEPLOY, both JSON, built and parsed in one place.

Commands (``sparsetel/v1/{group}/NCMD/{edge}``, QoS 1)::

    {"command": "deploy", "deployment": ID, "model_ref": 16 hex, "model_sha256": 64 hex}
    {"command": "rollback", "deployment": ID}

A deploy tells the edge to fetch the bundle retained on ``.../MODEL/{model_ref}``.

Reports (``sparsetel/v1/{group}/DEPLOY/{edge}``, QoS 1), one per step::

    {"deployment", "edge", "group", "step", "model_sha256", "previous_sha256", "reason",
     "timestamp_ms"}

Steps: ``received`` (fetching the bundle), ``verified`` (signature, sha256, KPI schema and
self-test passed), then one final step: ``switched`` (the new model encodes from the next
frame on; a fresh birth names it), ``rejected`` (it failed a check; the old model keeps
running), ``rolled_back`` (back on the previous model: a rollback command, or the new model
failed after the switch) or ``failed`` (a rollback with no previous model).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .topics import validate_id

__all__ = [
    "FINAL_STEPS",
    "STEPS",
    "DeployReport",
    "Step",
    "deploy_command",
    "parse_command",
    "parse_report",
    "rollback_command",
]

Step = Literal["received", "verified", "switched", "rejected", "rolled_back", "failed"]
STEPS: tuple[Step, ...] = ("received", "verified", "switched", "rejected", "rolled_back", "failed")
FINAL_STEPS: frozenset[str] = frozenset({"switched", "rejected", "rolled_back", "failed"})
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def deploy_command(deployment: str, model_ref: str, model_sha256: str) -> bytes:
    """The NCMD payload that tells an edge to fetch and run a model."""
    return _dumps(
        {
            "command": "deploy",
            "deployment": validate_id(deployment),
            "model_ref": model_ref,
            "model_sha256": model_sha256,
        }
    )


def rollback_command(deployment: str) -> bytes:
    """The NCMD payload that sends an edge back to its previous model."""
    return _dumps({"command": "rollback", "deployment": validate_id(deployment)})


def parse_command(payload: bytes | bytearray) -> dict[str, Any]:
    """An NCMD payload as a dict with at least "command": plain text (``rebirth``) or JSON.
    A deploy or rollback missing its fields, or with bad ones, becomes ``"invalid"`` with
    a "reason"; the agent reports it rather than acting on it."""
    text = bytes(payload).decode("utf-8", errors="replace").strip()
    if not text.startswith("{"):
        return {"command": text or "empty"}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"command": "invalid", "reason": "not JSON"}
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        return {"command": "invalid", "reason": "no command"}
    command = data["command"]
    if command in ("deploy", "rollback"):
        deployment = data.get("deployment")
        try:
            validate_id(deployment if isinstance(deployment, str) else "")
        except ValueError:
            return {"command": "invalid", "reason": "bad deployment id"}
    if command == "deploy" and not (
        isinstance(data.get("model_ref"), str)
        and _HEX16.fullmatch(data["model_ref"])
        and isinstance(data.get("model_sha256"), str)
        and _HEX64.fullmatch(data["model_sha256"])
        and data["model_sha256"].startswith(data["model_ref"])
    ):
        return {"command": "invalid", "reason": "bad model_ref or model_sha256"}
    return data


@dataclass(frozen=True)
class DeployReport:
    """One step of one edge in one deployment (see the module docstring for the steps)."""

    deployment: str
    edge: str
    group: str
    step: Step
    model_sha256: str | None
    previous_sha256: str | None
    reason: str | None
    timestamp_ms: int

    @property
    def final(self) -> bool:
        return self.step in FINAL_STEPS

    def to_json(self) -> bytes:
        return _dumps(asdict(self))


def parse_report(payload: bytes | bytearray) -> DeployReport:
    """A DEPLOY payload; ValueError saying what is wrong when it is not a valid report."""
    try:
        data = json.loads(bytes(payload))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"deploy report is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("deploy report must be a JSON object")
    try:
        report = DeployReport(**data)
    except TypeError as exc:
        raise ValueError(f"deploy report has missing or unknown fields: {exc}") from exc
    if report.step not in STEPS:
        raise ValueError(f"unknown deploy step {report.step!r}")
    return report


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")
