"""MQTT topic names: ``sparsetel/v1/{group}/{KIND}/{edge}``, built and parsed in one place.

``sparsetel/v1/{group}/DEAD/{edge}`` carries the cloud's copies of the messages of `edge` it
rejected, and ``sparsetel/v1/{group}/ACK/{edge}`` the cloud's receipts for the frames of
`edge` it has stored (`sparsetel.shared.receipt`). One kind names no edge:
``sparsetel/v1/{group}/MODEL/{model}`` holds a signed model bundle (`sparsetel.shared.bundle`),
retained, where `model` is the model ref in hex (the first 16 hex digits of the encoder's
sha256); edges fetch it when told to deploy it.

`group` and `edge` are ids: 1 to 64 characters from ``A-Z a-z 0-9 _ . -`` (never ``.`` or
``..``, so an id is also safe as a file name). Wildcards appear only in subscriptions.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from .errors import WireError

__all__ = [
    "KINDS",
    "PREFIX",
    "Kind",
    "TopicParts",
    "data_subscription",
    "data_topic",
    "dead_letter_topic",
    "deploy_subscription",
    "deploy_topic",
    "health_subscription",
    "health_topic",
    "model_topic",
    "ncmd_topic",
    "parse_topic",
    "receipt_topic",
    "shared_subscription",
    "state_subscription",
    "state_topic",
    "validate_id",
]

PREFIX = "sparsetel/v1"
Kind = Literal["DATA", "STATE", "NCMD", "DEPLOY", "HEALTH", "MODEL", "DEAD", "ACK"]
KINDS: tuple[Kind, ...] = ("DATA", "STATE", "NCMD", "DEPLOY", "HEALTH", "MODEL", "DEAD", "ACK")
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class TopicParts(NamedTuple):
    """What a topic names: `kind` (one of KINDS), the device `group` and the `edge` id (for
    MODEL: the model ref in hex)."""

    kind: Kind
    group: str
    edge: str


def validate_id(name: str) -> str:
    """`name` when it is a valid group or edge id; ValueError otherwise."""
    if not isinstance(name, str) or not _ID.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"not a valid id (1-64 of A-Z a-z 0-9 _ . -): {name!r}")
    return name


def _topic(kind: Kind, group: str, edge: str) -> str:
    return f"{PREFIX}/{validate_id(group)}/{kind}/{validate_id(edge)}"


def data_topic(group: str, edge: str) -> str:
    """Where `edge` publishes its frames (QoS 1)."""
    return _topic("DATA", group, edge)


def state_topic(group: str, edge: str) -> str:
    """Where `edge` publishes its retained birth, and its death as the last will."""
    return _topic("STATE", group, edge)


def ncmd_topic(group: str, edge: str) -> str:
    """Where the cloud sends commands to `edge` (rebirth, deploy, rollback)."""
    return _topic("NCMD", group, edge)


def deploy_topic(group: str, edge: str) -> str:
    """Where `edge` reports the progress of a model deployment."""
    return _topic("DEPLOY", group, edge)


def health_topic(group: str, edge: str) -> str:
    """Where `edge` publishes heartbeats."""
    return _topic("HEALTH", group, edge)


def model_topic(group: str, model_ref_hex: str) -> str:
    """Where the cloud keeps the signed bundle of a model (retained); `model_ref_hex` is the
    16 hex digits a frame names the model by."""
    if len(model_ref_hex) != 16 or any(c not in "0123456789abcdef" for c in model_ref_hex):
        raise ValueError(f"a model ref is 16 lower-case hex digits, got {model_ref_hex!r}")
    return _topic("MODEL", group, model_ref_hex)


def dead_letter_topic(group: str, edge: str) -> str:
    """Where the cloud copies the messages of `edge` it rejected (see `cloud.ingest.deadletter`)."""
    return _topic("DEAD", group, edge)


def receipt_topic(group: str, edge: str) -> str:
    """Where the cloud confirms the frames of `edge` it has stored (see `shared.receipt`)."""
    return _topic("ACK", group, edge)


def deploy_subscription(group: str = "+") -> str:
    """Filter for the deployment reports of every edge of `group`."""
    return _subscription("DEPLOY", group)


def _subscription(kind: Kind, group: str) -> str:
    if group != "+":
        validate_id(group)
    return f"{PREFIX}/{group}/{kind}/+"


def data_subscription(group: str = "+") -> str:
    """Filter for the frames of every edge of `group` (``"+"``: of every group)."""
    return _subscription("DATA", group)


def health_subscription(group: str = "+") -> str:
    """Filter for the heartbeats of every edge of `group` (``"+"``: of every group)."""
    return _subscription("HEALTH", group)


def state_subscription(group: str = "+") -> str:
    """Filter for the births and deaths of every edge of `group` (``"+"``: of every group)."""
    return _subscription("STATE", group)


def shared_subscription(topic_filter: str, share: str = "decoders") -> str:
    """MQTT 5 shared subscription: each message goes to one subscriber of the `share` group."""
    return f"$share/{validate_id(share)}/{topic_filter}"


def parse_topic(topic: str) -> TopicParts:
    """Split a concrete topic into its parts; WireError(reason="topic") when it is not ours."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] not in KINDS:
        raise WireError(f"not a sparsetel topic: {topic!r}", reason="topic")
    try:
        group, edge = validate_id(parts[2]), validate_id(parts[4])
    except ValueError as exc:
        raise WireError(f"bad id in topic {topic!r}: {exc}", reason="topic") from exc
    return TopicParts(parts[3], group, edge)
