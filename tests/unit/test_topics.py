"""Topic names: built from ids, parsed back, and nothing else accepted."""

from __future__ import annotations

import pytest

from sparsetel.shared.errors import WireError
from sparsetel.shared.topics import (
    KINDS,
    TopicParts,
    data_subscription,
    data_topic,
    dead_letter_topic,
    deploy_subscription,
    deploy_topic,
    health_topic,
    model_topic,
    ncmd_topic,
    parse_topic,
    receipt_topic,
    shared_subscription,
    state_subscription,
    state_topic,
    validate_id,
)

BUILDERS = {
    "DATA": data_topic,
    "STATE": state_topic,
    "NCMD": ncmd_topic,
    "DEPLOY": deploy_topic,
    "HEALTH": health_topic,
    "DEAD": dead_letter_topic,
    "ACK": receipt_topic,
}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "MODEL"])
def test_topic_builders_follow_the_layout_and_parse_back(kind: str) -> None:
    topic = BUILDERS[kind]("cell-7", "edge_01.a")
    assert topic == f"sparsetel/v1/cell-7/{kind}/edge_01.a"
    assert parse_topic(topic) == TopicParts(kind, "cell-7", "edge_01.a")  # type: ignore[arg-type]


def test_a_model_topic_is_named_by_the_model_ref_and_parses_back() -> None:
    topic = model_topic("cell-7", "0123456789abcdef")
    assert topic == "sparsetel/v1/cell-7/MODEL/0123456789abcdef"
    assert parse_topic(topic) == TopicParts("MODEL", "cell-7", "0123456789abcdef")
    for bad in ("0123", "0123456789ABCDEF", "0123456789abcdeg", "../../STATE/x"):
        with pytest.raises(ValueError):
            model_topic("cell-7", bad)
    assert deploy_subscription("g1") == "sparsetel/v1/g1/DEPLOY/+"


def test_subscriptions_use_single_level_wildcards() -> None:
    assert data_subscription() == "sparsetel/v1/+/DATA/+"
    assert state_subscription() == "sparsetel/v1/+/STATE/+"
    assert data_subscription("g1") == "sparsetel/v1/g1/DATA/+"
    assert state_subscription("g1") == "sparsetel/v1/g1/STATE/+"


def test_shared_subscription_prefixes_the_share_group() -> None:
    assert shared_subscription(data_subscription()) == "$share/decoders/sparsetel/v1/+/DATA/+"
    with pytest.raises(ValueError):
        shared_subscription(data_subscription(), share="a/b")


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 64, "..a", "-"])
def test_validate_id_accepts_ids(name: str) -> None:
    assert validate_id(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a/b", "a+", "#", "a b", "é", ".", "..", "a\n", "a\0"]
)
def test_validate_id_rejects_non_ids(name: str) -> None:
    with pytest.raises(ValueError):
        validate_id(name)


@pytest.mark.parametrize("builder", [data_topic, state_topic, ncmd_topic])
def test_builders_reject_bad_ids(builder: object) -> None:
    with pytest.raises(ValueError):
        builder("g1", "+")  # type: ignore[operator]
    with pytest.raises(ValueError):
        builder("a/b", "e1")  # type: ignore[operator]


def test_subscription_rejects_bad_group() -> None:
    with pytest.raises(ValueError):
        data_subscription("#")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "sparsetel/v1/g1/DATA",
        "sparsetel/v1/g1/DATA/e1/extra",
        "sparsetel/v2/g1/DATA/e1",
        "other/v1/g1/DATA/e1",
        "sparsetel/v1/g1/data/e1",
        "sparsetel/v1/g1/NDATA/e1",
        "sparsetel/v1/+/DATA/e1",
        "sparsetel/v1/g1/DATA/+",
        "sparsetel/v1//DATA/e1",
        "$share/decoders/sparsetel/v1/g1/DATA/e1",
    ],
)
def test_parse_topic_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(WireError) as info:
        parse_topic(topic)
    assert info.value.reason == "topic"
