"""SDLGM with temporal context: closed-loop predictive coding with learned sparse codes.

What ships is not this model's lattice, priors and gates but codec format 2
(`cloud.codec.shipping`, `shared.temporalcodec`): words that move groups of KPIs, a prior fitted
by counting in context, a MAP encoder. It keeps this model's grid (`find_grid`) and key words
(KEY_WORDS k-means centroids); on uccmisl it spends 17.6 bits for 29.9 dB where this model's
own codec spent 20.5 for 22.5 (docs/temporal-codec.md). The model below is the benchmark's
ablations and the reference the shipped codec was measured against.

Telemetry at 1 Hz barely changes between measurements, so the codec codes each measurement
against the decoder's previous reconstruction (the prediction ``p``), not alone:

- prediction ``p_t = x̂_{t-1}``; the first measurement of a frame is a key measurement,
  coded without context: its first word is the nearest of KEY_WORDS whole-measurement words
  (k-means centroids of the training measurements) and it has L - 1 words left, so every
  frame decodes on its own and a lost frame costs only itself (video codecs' key frames);
- the residual ``r = x_t - p_t`` is coded as a bag of at most L codewords from a codebook of
  K: slot l picks ``c_l`` and a gate ``s_l``, and ``x̂_t = p_t + sum_l s_l C[c_l]`` (the
  paper's ``z = sum_l s_l c_l`` read by a linear decoder on top of the prediction);
- the codebook is a lattice of one-KPI moves (KPI j up or down by 1, 2, ... steps) holding
  the levels the training residuals use (`lattice_words`); the step follows the fidelity
  aimed at, ``STEP_SCALE * sqrt(12 σ²)`` (a lattice finer than σ² alone asks for, with the
  gates' dead zone, gave more SNR per bit on the validation sessions), rounded to whole
  steps of the KPI's own grid where its values have one (`find_grid`: dBm, CQI, km/h are
  whole units), so at fine steps those KPIs decode exactly; a fine lattice over a wide range
  has two scales (`_levels`), so its size grows as the square root of the range;
- the reconstruction is clamped to the normaliser's span (values beyond it arrive clipped),
  while the decoder's state stays on the lattice;
- inference is the model's exact posterior, slot by slot: ``alpha_lk = (||r_l||² - ||r_l -
  C_k||²) / 2σ² + log p(k)`` with ``r_l`` the residual left after slots < l (each KPI's
  squared error weighted, see `TemporalConfig.weights`), and the gate
  opens when the best word's likelihood gain beats its rate under the learned priors (and the
  word brings x̂ closer to x, so the closed loop cannot drift);
- training maximises the ELBO with Gumbel-Softmax samples of codes and gates: the masked
  Gaussian NLL with fixed variance σ² + KL(q(c) || p(c)) + KL(q(s) || Bernoulli(π)), over
  the priors p(c) (per kind of measurement: key or context) and π (per slot). With learned
  priors the KL terms are the code's rate in nats, so this is the rate-distortion
  Lagrangian: frequent moves get cheap, gates close where a word is not worth its bits, and
  a steady measurement costs only its empty code.

Training measurements are batched: each one's context is the decoder's state after coding
the HISTORY measurements before it closed loop with the current model (so it carries the
error the codec really leaves), and key measurements are mixed in at their share of the
stream (1 in FRAME). Coding (`code_frames`) is exact and closed loop, many frames at once.

Learning the codebook and an amortised encoder by gradient as well was tried and made the
codec worse on uccmisl (more bits and lower SNR after training than before it), so the
codebook stays on the data's lattice; see docs/benchmark.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .model import bernoulli_kl
from .normaliser import CLIP

__all__ = [
    "LR",
    "SNR_AT_L1",
    "SNR_PER_DOUBLING",
    "TARGET_WEIGHT",
    "Codes",
    "Grid",
    "TemporalConfig",
    "TemporalSDLGM",
    "code_frames",
    "find_grid",
    "lattice_step",
    "lattice_words",
    "target_snr_db",
    "train_temporal",
]

log = logging.getLogger(__name__)

STEP_SCALE = 0.6  # lattice step relative to the σ² it serves; chosen on validation sessions
HISTORY = 4  # measurements coded closed loop before each training measurement
KEY_WORDS = 1024  # whole-measurement words a key measurement starts from
KMEANS_ROWS = 50_000  # training measurements the key words are fitted on
MIN_USES = 0.01  # share of a KPI's training moves beyond which its lattice stops
FINE_LEVELS = 64  # lattice levels of a KPI kept one by one; beyond, two scales (`_levels`)
# The distortion each L aims at unless told: SNR_AT_L1 dB at L = 1, SNR_PER_DOUBLING more per
# doubling; Adam's learning rate for the priors; the target KPI's precision relative to the
# others. All chosen on the validation sessions (docs/benchmark/validation.md).
SNR_AT_L1 = 10.0
SNR_PER_DOUBLING = 7.5
LR = 3e-3
TARGET_WEIGHT = 8.0


def target_snr_db(L: int, at_l1: float = SNR_AT_L1) -> float:
    """The SNR in dB the codec aims at with L words: `at_l1` at L = 1, SNR_PER_DOUBLING more
    per doubling."""
    return at_l1 + SNR_PER_DOUBLING * math.log2(L)


@dataclass(frozen=True)
class TemporalConfig:
    """Hyperparameters, saved with the weights. `snr_db` sets σ² = 10^(-snr_db/10) (data
    normalised to unit variance): the decoder's variance, i.e. the distortion aimed at. K is
    the lattice's size, set by `train_temporal` from the data (0 before).

    - `span`: normalised values lie in [-span, span] (the normaliser clips there), and so
      does every reconstruction.
    - `weights` (one per KPI, default all 1) scale each KPI's precision: KPI j's decoder
      variance is σ² / weights[j], so a KPI that matters more (the target the cloud
      predicts) gets its words first when L is short.
    - `estimator`: "st" (straight-through Gumbel-Softmax) or "relaxed" (soft samples in
      training).
    - `gates` False is the paper's baseline: always L codes.
    - `context` False codes every measurement as a key measurement (no temporal context).
    """

    D: int
    L: int = 4
    K: int = 0
    snr_db: float = 30.0
    tau_start: float = 1.0
    tau_end: float = 0.2
    estimator: str = "st"
    gates: bool = True
    context: bool = True
    frame: int = 50
    weights: tuple[float, ...] = ()
    span: float = CLIP
    steps: int = 300
    batch: int = 512
    lr: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ("st", "relaxed"):
            raise ValueError(f"estimator must be 'st' or 'relaxed', got {self.estimator!r}")
        if not (self.D >= 1 and self.L >= 1 and self.K >= 0 and self.steps >= 0):
            raise ValueError(f"D and L must be positive, K and steps not negative: {self}")
        if self.weights and (len(self.weights) != self.D or min(self.weights) <= 0):
            raise ValueError(f"weights must be {self.D} positive numbers, got {self.weights}")

    @property
    def sigma2(self) -> float:
        return 10.0 ** (-self.snr_db / 10.0)


class TemporalSDLGM(nn.Module):
    """Codebook C (shape: [K, D]) and key words (shape: [KEY_WORDS, D]), both fixed; code
    priors per kind of measurement (key, context) and gate priors per slot (learned); the
    sequential slot encoder."""

    # Buffers, registered in __init__ (nn.Module's __getattr__ alone types them Tensor | Module).
    codebook: torch.Tensor
    group: torch.Tensor
    value: torch.Tensor
    keys: torch.Tensor
    weight: torch.Tensor

    def __init__(self, cfg: TemporalConfig, codebook: torch.Tensor, keys: torch.Tensor) -> None:
        super().__init__()
        if codebook.shape != (cfg.K, cfg.D) or keys.ndim != 2 or keys.shape[1] != cfg.D:
            raise ValueError(
                f"codebook must be [{cfg.K}, {cfg.D}] and key words [*, {cfg.D}], got "
                f"{list(codebook.shape)} and {list(keys.shape)}"
            )
        self.cfg = cfg
        group = codebook.abs().argmax(1) if cfg.K else torch.zeros(0, dtype=torch.long)
        value = codebook.gather(1, group.unsqueeze(1)).squeeze(1)
        if not torch.equal(codebook, F.one_hot(group, cfg.D).to(codebook.dtype) * value[:, None]):
            raise ValueError("every codeword must move a single KPI (a lattice word)")
        self.register_buffer("codebook", codebook.float())
        self.register_buffer("group", group)  # the KPI each word moves
        self.register_buffer("value", value.float())  # and by how much
        self.register_buffer("keys", keys.float())
        self.register_buffer("weight", torch.tensor(cfg.weights or (1.0,) * cfg.D))
        self.code_prior = nn.Parameter(torch.zeros(2, cfg.K))  # [key, context] logits
        self.gate_prior = nn.Parameter(torch.zeros(2, cfg.L))  # logit of P(s_l = 1)
        # The KPIs' native grids the lattice was built on (`train_temporal` sets it): what
        # the shipped codec (`cloud.codec.shipping`) counts its integer state in.
        self.grid = Grid(np.zeros(cfg.D), np.zeros(cfg.D))

    def pruned(self, keep: np.ndarray) -> TemporalSDLGM:
        """The model with only the words `keep` (int64 indices), priors carried over: dead
        words go, and the moves they coded fall to the words that stay."""
        cfg = replace(self.cfg, K=len(keep))
        model = TemporalSDLGM(cfg, self.codebook[torch.from_numpy(keep)].clone(), self.keys)
        model.grid = self.grid
        with torch.no_grad():
            model.code_prior.copy_(self.code_prior[:, torch.from_numpy(keep)])
            model.gate_prior.copy_(self.gate_prior)
        return model

    def key_word(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The nearest key word (int64, [B]) to each measurement (x, mask: [B, D])."""
        dist = ((x.unsqueeze(1) - self.keys.unsqueeze(0)) ** 2 * mask.unsqueeze(1)).sum(-1)
        return dist.argmin(-1)

    def clamp(self, u: torch.Tensor) -> torch.Tensor:
        """The reconstruction of a prediction plus words (u, any shape): within ±span."""
        return u.clamp(-self.cfg.span, self.cfg.span)

    def slot_logits(
        self, x: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, key: torch.Tensor, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Measurement x, prediction plus the words so far u (unclamped), mask ([B, D]), key
        ([B], 1 = key measurement) -> code logits alpha ([B, K]), the gate's "on" logit
        ([B]) and each word's gain ([B, K])."""
        return self._slot(self._terms(x, mask, key), u, slot)

    def _terms(self, x: torch.Tensor, mask: torch.Tensor, key: torch.Tensor) -> SlotTerms:
        """What `_slot` needs that does not change from slot to slot (x, mask: [B, D]; key:
        [B]): made once per batch, not once per slot."""
        g = self.group
        kind = (1 - key).long()  # 0 key, 1 context
        log_prior = F.log_softmax(self.code_prior, dim=-1)[kind]
        return SlotTerms(x[:, g], self.weight[g] * mask[:, g], log_prior, kind)

    def _slot(
        self, terms: SlotTerms, u: torch.Tensor, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`slot_logits` from the batch's `terms` and u ([B, D])."""
        # ||x - x̂||² - ||x - x̂'||² where the word moves KPI j from x̂_j to clamp(u_j + v),
        # KPI j observed (times its weight): one word moves one KPI, so this costs [B, K],
        # not [B, K, D]. Without the clamp it is 2 r_j v - v².
        xg, ug = terms.xg, u[:, self.group]
        gain = (xg - self.clamp(ug)) ** 2 - (xg - self.clamp(ug + self.value)) ** 2
        gain = terms.weight * gain
        alpha = gain / (2 * self.cfg.sigma2) + terms.log_prior
        # A gate is worth opening when the code's expected log-likelihood gain beats its rate.
        value = (F.softmax(alpha, dim=-1) * alpha).sum(-1)
        return alpha, value + self.gate_prior[terms.kind, slot], gain

    def encode(
        self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inference: x, p, mask ([B, D]), key ([B]) -> codes (int64, [B, L]) and gates
        (bool, [B, L]); slot l codes what slots < l left; p of a key measurement is its key
        word, and it opens at most L - 1 gates. Gates close for good: the open
        slots are a prefix, and the code is the multiset of their words."""
        u = p.clone()
        B, L = key.shape[0], self.cfg.L
        alive = torch.ones(B, dtype=torch.bool)
        limit = L - key  # a key measurement's key word is one of its L
        codes = torch.zeros(B, L, dtype=torch.long)
        gates = torch.zeros(B, L, dtype=torch.bool)
        terms = self._terms(x, mask, key)
        for slot in range(L):
            # Only measurements whose gates are all open so far are coded further.
            rows = torch.nonzero(alive & (slot < limit)).squeeze(1)
            if rows.numel() == 0:
                break
            alpha, gate, gain = self._slot(terms.rows(rows), u[rows], slot)
            c = alpha.argmax(-1)
            on = torch.ones_like(c, dtype=torch.bool)
            if self.cfg.gates:
                # A word that would not bring x̂ closer to x is never sent: the error of a
                # measurement only shrinks slot by slot, so the closed loop cannot drift.
                helps = gain.gather(1, c.unsqueeze(1)).squeeze(1) > 0
                on = (gate > 0) & helps
            sent = rows[on]
            u[sent] += self.codebook[c[on]] * mask[sent]
            codes[rows, slot] = c
            gates[sent, slot] = True
            alive[rows[~on]] = False
        return codes, gates

    def decode(self, p: torch.Tensor, codes: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """p ([B, D]), codes ([B, L]), gates ([B, L]) -> the decoder's state u = p + sum of
        the open codewords; its reconstruction is ``clamp(u)``. The state stays unclamped, on
        the lattice, so a KPI that touched ±span moves back onto its grid."""
        return p + (self.codebook[codes] * gates.unsqueeze(-1)).sum(1)

    def loss(
        self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, key: torch.Tensor, tau: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per measurement (nats) with Gumbel-Softmax samples of codes and
        gates; also the mean distortion and rate for the log."""
        cfg = self.cfg
        hard = cfg.estimator == "st"
        u = p
        rate = torch.zeros(x.shape[0])
        alive = torch.ones(x.shape[0])
        terms = self._terms(x, mask, key)
        log_prior = terms.log_prior
        for slot in range(cfg.L):
            alive = alive * (slot < cfg.L - key).float()
            alpha, gate, _ = self._slot(terms, u, slot)
            c = _sample(alpha, tau, hard)
            q_on = torch.sigmoid(gate) if cfg.gates else torch.ones_like(gate)
            on = torch.ones_like(gate)
            if cfg.gates:
                prior_on = torch.sigmoid(self.gate_prior[terms.kind, slot])
                rate = rate + alive * bernoulli_kl(q_on, prior_on)
                on = _sample(torch.stack([torch.zeros_like(gate), gate], -1), tau, hard)[:, 1]
            q_c = F.softmax(alpha, -1)
            kl_c = (q_c * (torch.log(q_c + 1e-12) - log_prior)).sum(-1)
            rate = rate + alive * q_on * kl_c
            alive = alive * on
            u = u + alive.unsqueeze(-1) * (c @ self.codebook) * mask
        r = (x - self.clamp(u)) * mask
        distortion = (r**2 * self.weight).sum(-1)
        loss = distortion / (2 * cfg.sigma2) + rate
        return loss.mean(), {
            "mse": float((r**2).detach().sum(-1).mean()) / cfg.D,
            "rate_bits": float(rate.detach().mean()) / math.log(2),
        }


@dataclass(frozen=True)
class SlotTerms:
    """A batch's per-word terms of the slot logits ([B, K] each): x at the KPI each word
    moves, that KPI's weight times its mask, the word's log prior; and each row's kind of
    measurement (int64, [B]: 0 key, 1 context)."""

    xg: torch.Tensor
    weight: torch.Tensor
    log_prior: torch.Tensor
    kind: torch.Tensor

    def rows(self, rows: torch.Tensor) -> SlotTerms:
        """The terms of `rows` (int64 indices) only."""
        return SlotTerms(self.xg[rows], self.weight[rows], self.log_prior[rows], self.kind[rows])


def _sample(logits: torch.Tensor, tau: float, hard: bool) -> torch.Tensor:
    u = torch.rand_like(logits).clamp(1e-10, 1.0 - 1e-7)
    g = -torch.log(-torch.log(u))
    soft = F.softmax((logits + g) / tau, -1)
    if not hard:
        return soft
    hot = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hot + soft - soft.detach()


@dataclass(frozen=True)
class Pairs:
    """Training measurements (float32): x, mask ([N, D]) and the HISTORY measurements before
    each in its session, oldest first, with their masks (hist, hist_mask: [N, HISTORY, D])."""

    x: torch.Tensor
    mask: torch.Tensor
    hist: torch.Tensor
    hist_mask: torch.Tensor

    @property
    def prev(self) -> torch.Tensor:
        return self.hist[:, -1]


def make_pairs(xs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Pairs:
    """Every measurement of each session (x: [T, D] normalised, 0 where missing) that has
    HISTORY predecessors, with them."""
    H = HISTORY
    keep = [(a, b) for a, b in zip(xs, masks, strict=True) if len(a) > H]
    if not keep:
        raise ValueError(f"no training session has more than {H} measurements")

    def stack(arrays: Sequence[np.ndarray], lag: int) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([a[H - lag : len(a) - lag] for a in arrays]))

    x = stack([a for a, _ in keep], 0).float()
    m = stack([b for _, b in keep], 0).float()
    hist = torch.stack([stack([a for a, _ in keep], lag) for lag in range(H, 0, -1)], 1)
    hmask = torch.stack([stack([b for _, b in keep], lag) for lag in range(H, 0, -1)], 1)
    return Pairs(x, m, hist.float(), hmask.float())


@torch.no_grad()
def _context(model: TemporalSDLGM, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's state after coding the history closed loop from its exact start: the
    prediction with the error the codec really leaves ([B, D])."""
    state = hist[:, 0]
    zeros = torch.zeros(len(hist))
    for j in range(1, hist.shape[1]):
        codes, gates = model.encode(hist[:, j], state, hist_mask[:, j], zeros)
        state = model.decode(state, codes, gates)
    return state


def _batch(model: TemporalSDLGM, pairs: Pairs, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    idx = torch.randint(len(pairs.x), (cfg.batch,), generator=gen)
    x, mask = pairs.x[idx], pairs.mask[idx]
    key = (torch.rand(cfg.batch, generator=gen) < 1.0 / cfg.frame).float()
    if not cfg.context:
        key = torch.ones(cfg.batch)
    p = _context(model, pairs.hist[idx], pairs.hist_mask[idx])
    p = torch.where(key.bool().unsqueeze(-1), model.keys[model.key_word(x, mask)], p)
    return x, p, mask, key


def lattice_step(snr_db: float) -> float:
    """STEP_SCALE times the step whose uniform quantisation error (step² / 12 per KPI) is
    the distortion aimed at."""
    return STEP_SCALE * math.sqrt(12.0 * 10.0 ** (-snr_db / 10.0))


@dataclass(frozen=True)
class Grid:
    """Where each KPI's normalised values lie: on ``origin + n * step`` (shape: [D] each;
    step 0 where the KPI has no such grid). Counters and KPIs reported in whole units (dBm,
    CQI, km/h) are on one after a linear normalisation; log-scaled ones are not."""

    step: np.ndarray
    origin: np.ndarray

    def aligned(self, step: float) -> np.ndarray:
        """Per-KPI lattice steps (shape: [D]): the nearest whole number of grid steps (at
        least one) where a KPI has a grid, so a move lands on a value the KPI can take and
        the finest lattice is exact; `step` elsewhere."""
        n = np.maximum(np.rint(step / np.where(self.step > 0, self.step, 1.0)), 1.0)
        return np.where(self.step > 0, n * self.step, step)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Rows (shape: [N, D]) moved to the nearest grid value of each KPI that has one."""
        g = np.where(self.step > 0, self.step, 1.0)
        on = self.origin + np.rint((x - self.origin) / g) * g
        return np.where(self.step > 0, on, x)


GRID_SHARE = 0.99  # share of a KPI's observed values that must lie on its grid
GRID_TOL = 1e-3  # how far from a grid point (in grid steps) a value may lie


def find_grid(x: np.ndarray, mask: np.ndarray) -> Grid:
    """The grid of each KPI in normalised training rows (x, mask: [N, D]): the typical gap
    between its distinct values, through its median value, kept when at least GRID_SHARE of
    its observed values lie on it (values clipped by the normaliser may not)."""
    D = x.shape[1]
    step, origin = np.zeros(D), np.zeros(D)
    for j in range(D):
        v = x[mask[:, j].astype(bool), j]
        u = np.unique(v)
        if len(u) < 2:
            continue
        g, o = float(np.median(np.diff(u))), float(np.median(v))
        n = (v - o) / g
        if g > 0 and np.mean(np.abs(n - np.rint(n)) < GRID_TOL) >= GRID_SHARE:
            step[j], origin[j] = g, o
    return Grid(step, origin)


def lattice_words(pairs: Pairs, steps: np.ndarray) -> torch.Tensor:
    """One-KPI moves (shape: [K, D]): for each KPI j and sign, ``±steps[j], ±2 steps[j],
    ...`` up to the largest level that at least a MIN_USES share of that KPI's nonzero
    training moves reach (at least one level; two scales when that is many, see `_levels`),
    KPI by KPI, up before down. A move beyond the top level takes more than one word."""
    r = ((pairs.x - pairs.prev) * pairs.mask).numpy()
    words = []
    for j in range(r.shape[1]):
        q = np.rint(r[:, j] / steps[j])
        q = q[q != 0]
        for sign in (1.0, -1.0):
            mag = np.sort(q[np.sign(q) == sign] * sign)
            top = max(int(mag[int(len(mag) * (1 - MIN_USES))]) if len(mag) else 1, 1)
            for level in _levels(top):
                w = np.zeros(r.shape[1], dtype=np.float32)
                w[j] = sign * level * steps[j]
                words.append(w)
    return torch.from_numpy(np.stack(words))


def _levels(top: int) -> list[int]:
    """The lattice levels up to `top`: every one up to FINE_LEVELS; beyond, two scales -- 1 to
    F and the multiples of F, F ≈ sqrt(top) -- so a fine lattice over a wide range keeps
    about 2 sqrt(top) words and a move takes at most two (a coarse one and a fine one)."""
    if top <= FINE_LEVELS:
        return list(range(1, top + 1))
    f = max(FINE_LEVELS, math.isqrt(top - 1) + 1)
    return list(range(1, f)) + list(range(f, f * (-(-top // f)) + 1, f))


def key_words(pairs: Pairs, grid: Grid, seed: int) -> torch.Tensor:
    """KEY_WORDS whole-measurement words (shape: [KEY_WORDS, D]): k-means centroids of the
    fully observed training measurements (scikit-learn), fewer when there are few rows, each
    moved onto the KPIs' grid so the lattice moves that follow can land on exact values."""
    from sklearn.cluster import MiniBatchKMeans

    full = pairs.x[pairs.mask.bool().all(-1)].numpy()
    rows = full if len(full) else pairs.x.numpy()
    k = max(1, min(KEY_WORDS, len(rows)))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=2048, max_iter=20)
    centres = km.fit(rows[:KMEANS_ROWS]).cluster_centers_
    return torch.from_numpy(grid.snap(centres)).float()


def train_temporal(
    cfg: TemporalConfig, xs: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> TemporalSDLGM:
    """Fit the codec on training sessions (normalised, 0 where missing): the lattice from
    the data, then the priors by the ELBO. The returned model's cfg carries the lattice's K."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = make_pairs(xs, masks)
    grid = find_grid(pairs.x.double().numpy(), pairs.mask.numpy())
    words = lattice_words(pairs, grid.aligned(lattice_step(cfg.snr_db)))
    cfg = replace(cfg, K=len(words))
    model = TemporalSDLGM(cfg, words, key_words(pairs, grid, cfg.seed))
    model.grid = grid
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for step in range(cfg.steps):
        tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (step / max(cfg.steps - 1, 1))
        x, p, mask, key = _batch(model, pairs, gen)
        loss, info = model.loss(x, p, mask, key, tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.debug(
                "step %d tau %.2f loss %.2f mse %.5f rate %.2f bits",
                step,
                tau,
                float(loss.detach()),
                info["mse"],
                info["rate_bits"],
            )
    return model


@dataclass(frozen=True)
class Codes:
    """A coded stream: per measurement the codes (int64, [N, L]), gates (bool, [N, L]),
    whether it is a key measurement (bool, [N]), its key word (int64, [N], -1 where not a
    key measurement) and the reconstruction (float64, [N, D])."""

    codes: np.ndarray
    gates: np.ndarray
    key: np.ndarray
    key_word: np.ndarray
    recon: np.ndarray


@torch.no_grad()
def code_frames(
    model: TemporalSDLGM, frames: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[Codes]:
    """Closed-loop coding of independent frames (x, mask: [n_i, D]), all in parallel."""
    if not frames:
        return []
    cfg = model.cfg
    n_max = max(len(x) for x, _ in frames)
    B = len(frames)
    X = torch.zeros(B, n_max, cfg.D)
    M = torch.zeros(B, n_max, cfg.D)
    for i, (x, m) in enumerate(frames):
        X[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.float32))
        M[i, : len(x)] = torch.from_numpy(np.asarray(m, dtype=np.float32))
    prev = torch.zeros(B, cfg.D)
    codes, gates, keys, recon = [], [], [], []
    for t in range(n_max):
        is_key = t == 0 or not cfg.context
        key = torch.full((B,), 1.0 if is_key else 0.0)
        kw = model.key_word(X[:, t], M[:, t]) if is_key else torch.full((B,), -1)
        p = model.keys[kw] if is_key else prev
        c, s = model.encode(X[:, t], p, M[:, t], key)
        state = model.decode(p, c, s)
        codes.append(c)
        gates.append(s)
        keys.append(kw)
        recon.append(model.clamp(state))
        prev = state
    C, S, W = torch.stack(codes, 1), torch.stack(gates, 1), torch.stack(keys, 1)
    R = torch.stack(recon, 1)
    out = []
    for i, (x, _) in enumerate(frames):
        n = len(x)
        w = W[i, :n].numpy()
        out.append(Codes(C[i, :n].numpy(), S[i, :n].numpy(), w >= 0, w, R[i, :n].double().numpy()))
    return out
