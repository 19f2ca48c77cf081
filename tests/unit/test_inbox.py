"""serve's inbox (bounded in messages and bytes) and its acknowledger (per connection)."""

from __future__ import annotations

import threading

import pytest

from sparsetel.cloud.ingest.inbox import (
    MAX_CONTROL_BYTES,
    Acknowledger,
    Inbox,
    Message,
    payload_limit,
)
from sparsetel.shared.topics import data_topic, health_topic, state_topic
from sparsetel.shared.wire import MAX_FRAME_BYTES


def _msg(size: int, mid: int = 1, conn: int = 0, qos: int = 1) -> Message:
    return Message("t", b"x" * (size - 1), mid, qos, 0, conn)  # size counts the topic too


class FakeClient:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def test_the_inbox_holds_at_most_its_messages_and_bytes() -> None:
    inbox = Inbox(max_messages=3, max_bytes=100)
    assert inbox.put(_msg(40, 1), timeout=0) and inbox.put(_msg(40, 2), timeout=0)
    assert inbox.put(_msg(40, 3), timeout=0) is False  # 120 bytes > 100
    assert inbox.put(_msg(20, 4), timeout=0)
    assert inbox.put(_msg(1, 5), timeout=0) is False  # 3 messages
    assert (len(inbox), inbox.nbytes) == (3, 100)
    assert [m.mid for m in inbox.take(10)] == [1, 2, 4] and inbox.nbytes == 0


def test_a_message_larger_than_the_byte_bound_still_enters_an_empty_inbox() -> None:
    inbox = Inbox(max_messages=10, max_bytes=100)
    assert inbox.put(_msg(500), timeout=0)
    assert inbox.put(_msg(1), timeout=0) is False
    assert inbox.get(timeout=0) is not None and inbox.get(timeout=0) is None


def test_a_put_waits_until_the_worker_makes_room() -> None:
    inbox = Inbox(max_messages=1, max_bytes=1000)
    assert inbox.put(_msg(10, 1), timeout=0)
    done = threading.Event()

    def network_thread() -> None:
        assert inbox.put(_msg(10, 2), timeout=10)
        done.set()

    thread = threading.Thread(target=network_thread)
    thread.start()
    assert not done.wait(0.2)  # still waiting: the inbox is full
    first = inbox.get(timeout=1)
    assert done.wait(5)
    thread.join()
    assert first is not None and first.mid == 1 and [m.mid for m in inbox.take(5)] == [2]


def test_payload_limits_follow_the_topic_kind() -> None:
    assert payload_limit(data_topic("g", "e")) == MAX_FRAME_BYTES
    assert payload_limit(state_topic("g", "e")) == MAX_CONTROL_BYTES
    assert payload_limit(health_topic("g", "e")) == MAX_CONTROL_BYTES
    assert payload_limit("not/ours") == MAX_CONTROL_BYTES


def test_a_message_is_acked_only_on_the_connection_it_came_on() -> None:
    acks = Acknowledger()
    client = FakeClient()
    acks.client = client
    before = _msg(10, mid=7, conn=acks.current)
    acks.connection_changed()  # the connection dropped: packet id 7 means nothing any more
    after = _msg(10, mid=7, conn=acks.current)
    assert acks.ack(before) is False
    assert acks.ack(after) is True
    assert acks.ack(_msg(10, mid=8, conn=acks.current, qos=0)) is None  # QoS 0: no ack
    assert client.acks == [(7, 1)]


def test_bad_inbox_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Inbox(0, 100)
