"""Which KPIs move together: `fit_groups` splits the KPIs into groups whose moves one word of the
temporal codec carries (`shared.temporalcodec`).

RSRP and RSSI rise and fall together, SNR with CQI, the uplink with the downlink: a measurement
where six KPIs move is often three pairs moving. Grouping them lets L words follow it, and
coding a member's move given its partners' costs less than coding each alone.

The groups are merged greedily from single KPIs: at each step the two groups (together at
most MAX_GROUP KPIs) whose moves share the most information, ``I(A; B) = H(A) + H(B) - H(A, B)``
over the training moves (clamped to ±CLAMP steps, missing as no move), while that is at least
MIN_SHARED bits per measurement.
"""

from __future__ import annotations

import numpy as np

from ...shared.temporaltables import MAX_GROUP

__all__ = ["CLAMP", "MIN_SHARED", "fit_groups"]

CLAMP = 2  # moves are told apart up to ±CLAMP steps when measuring shared information
MIN_SHARED = 0.05  # bits per measurement two groups must share to merge


def _entropy(symbols: np.ndarray) -> float:
    """Entropy in bits per row of integer symbols (int64, [N])."""
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _symbols(moves: np.ndarray, group: tuple[int, ...]) -> np.ndarray:
    """One integer per row for the clamped moves of `group`'s members (int64, [N])."""
    base = 2 * CLAMP + 1
    out = np.zeros(len(moves), dtype=np.int64)
    for j in group:
        out = out * base + np.clip(moves[:, j], -CLAMP, CLAMP) + CLAMP
    return out


def fit_groups(moves: np.ndarray, seen: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Groups of KPIs (each sorted, ordered by first member) from training moves (int,
    [N, D]: lattice steps per measurement) and where each KPI was observed (bool, [N, D])."""
    moves = np.where(seen, np.asarray(moves, dtype=np.int64), 0)
    if moves.ndim != 2:
        raise ValueError(f"moves must have shape [N, D], got {list(moves.shape)}")
    groups: list[tuple[int, ...]] = [(j,) for j in range(moves.shape[1])]
    if len(moves) == 0:
        return tuple(groups)
    entropy = {g: _entropy(_symbols(moves, g)) for g in groups}
    while True:
        best, pair = MIN_SHARED, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                A, B = groups[a], groups[b]
                if len(A) + len(B) > MAX_GROUP:
                    continue
                joint = tuple(sorted(A + B))
                if joint not in entropy:
                    entropy[joint] = _entropy(_symbols(moves, joint))
                shared = entropy[A] + entropy[B] - entropy[joint]
                if shared > best:
                    best, pair = shared, (a, b)
        if pair is None:
            break
        a, b = pair
        merged = tuple(sorted(groups[a] + groups[b]))
        groups = [g for i, g in enumerate(groups) if i not in pair] + [merged]
    return tuple(sorted(groups))
