"""The decoder's store receipts: which frames each edge may forget (`sparsetel.shared.receipt`).

`FrameIngest` notes every frame whose handling is final; after the store has committed them,
the service takes the notes (`take`) and publishes one receipt per edge and bdSeq (`publish`).
Notes made in a transaction that did not commit are thrown away (`discard`), so a receipt
never names a frame the database does not hold.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from ...shared.receipt import encode_receipt
from ...shared.topics import receipt_topic

__all__ = ["Receipts"]


class _Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> object: ...


class Receipts:
    """Frames noted as final since the last `take`, by (group, edge, bdSeq)."""

    def __init__(self) -> None:
        self._noted: defaultdict[tuple[str, str, int], list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return sum(len(seqs) for seqs in self._noted.values())

    def note(self, group: str, edge: str, bd_seq: int, seq: int) -> None:
        self._noted[(group, edge, bd_seq)].append(seq)

    def discard(self) -> None:
        self._noted.clear()

    def take(self) -> dict[tuple[str, str, int], list[int]]:
        noted, self._noted = dict(self._noted), defaultdict(list)
        return noted

    def publish(self, client: _Publisher | None) -> int:
        """Send the receipts of everything noted (QoS 0) and forget it; how many messages."""
        sent = 0
        for (group, edge, bd_seq), seqs in self.take().items():
            if client is None:
                continue
            for body in encode_receipt(bd_seq, seqs):
                client.publish(receipt_topic(group, edge), body, qos=0)
                sent += 1
        return sent
