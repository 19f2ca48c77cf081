"""The contexts of the temporal codec's entropy tables (`shared.temporalcodec`).

A measurement's moves are coded per group of KPIs (a word is one group's joint move), each
symbol with the table its context picks, so a KPI that moved a second ago, or whose partner in
the group has just moved, is coded with the statistics of such moments:

- whether a group moves: key measurement or not, whether the group moved in each of the last
  two measurements, and how many groups of this measurement have moved before it (0..3+);
- a member's move as a digit (``q + REACH`` for |q| <= REACH, else ESCAPE): key measurement,
  else the size classes of its own last two moves (|q|: 0, 1, 2-3, 4-7, 8-15, 16+ a second
  ago; 0, 1, 2-3, 4+ before); then the sign of each member before
  it in the group; then whether it must move (the last observed member of a moving group whose
  other members did not). An escaped move's size class (|q| - REACH in [2**(c-1), 2**c)) is
  coded with the KPI's own-history context, then its sign and c - 1 low bits raw.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BEFORE_CLASSES",
    "CLASSES",
    "COUNTS",
    "ESCAPE",
    "LAST_CLASSES",
    "MAX_GROUP",
    "MOVE_CONTEXTS",
    "OWN_CONTEXTS",
    "RADIX",
    "REACH",
    "delta_contexts",
    "move_context",
    "own_context",
]

REACH = 7  # moves coded as one digit: -REACH..REACH
RADIX = 2 * REACH + 2  # digits of a move: those, and ESCAPE
ESCAPE = RADIX - 1
MAX_GROUP = 3  # KPIs in one group
COUNTS = 4  # groups moved so far: 0, 1, 2, 3 or more
MOVE_CONTEXTS = 4 * COUNTS + COUNTS  # in context (moved at t-1, at t-2, count), at a key
# size classes of a KPI's move at t-1 and at t-2 (bit length, capped)
LAST_CLASSES, BEFORE_CLASSES = 6, 4
OWN_CONTEXTS = LAST_CLASSES * BEFORE_CLASSES + 1  # a KPI's own history, or a key
CLASSES = 48  # size classes of an escaped move: |q| - REACH < 2**48


def move_context(
    key: bool, members: Sequence[int], moved: Sequence[int], moved2: Sequence[int], count: int
) -> int:
    """The table of "does this group move" (0 .. MOVE_CONTEXTS - 1)."""
    count = count if count < COUNTS else COUNTS - 1
    if key:
        return 4 * COUNTS + count
    last = before = 0  # whether a member moved a measurement ago (2), two ago (1)
    for j in members:
        if moved[j]:
            last = 2
        if moved2[j]:
            before = 1
    return (last + before) * COUNTS + count


def own_context(key: bool, m1: int, m2: int) -> int:
    """A KPI's own-history context (0 .. OWN_CONTEXTS - 1) from its last two moves."""
    if key:
        return OWN_CONTEXTS - 1
    last, before = (
        min(abs(m1).bit_length(), LAST_CLASSES - 1),
        min(abs(m2).bit_length(), BEFORE_CLASSES - 1),
    )
    return int(last * BEFORE_CLASSES + before)


def delta_contexts(position: int) -> int:
    """How many digit tables the member at `position` (0-based) of a group has. The member at
    position i reads its digit with table ``2 * (own * 3**i + s) + forced``: `own` its
    `own_context`, s the signs (-1, 0, 1) of the members before it, each plus one, read as a
    base-3 number (an unobserved member's sign is 0), and `forced` whether it must move."""
    return int(OWN_CONTEXTS * 3**position * 2)
