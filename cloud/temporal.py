"""SDLGM with temporal context: closed-loop predictive coding with learned sparse codes.

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
  gates' dead zone, gave more SNR per bit on the validation sessions);
- inference is the model's exact posterior, slot by slot: ``alpha_lk = (||r_l||² - ||r_l -
  C_k||²) / 2σ² + log p(k)`` with ``r_l`` the residual left after slots < l, and the gate
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

__all__ = [
    "Codes",
    "TemporalConfig",
    "TemporalSDLGM",
    "code_frames",
    "lattice_step",
    "lattice_words",
    "train_temporal",
]

log = logging.getLogger(__name__)

STEP_SCALE = 0.6  # lattice step relative to the σ² it serves; chosen on validation sessions
HISTORY = 4  # measurements coded closed loop before each training measurement
KEY_WORDS = 256  # whole-measurement words a key measurement starts from
KMEANS_ROWS = 50_000  # training measurements the key words are fitted on
MIN_USES = 0.01  # share of a KPI's training moves beyond which its lattice stops


@dataclass(frozen=True)
class TemporalConfig:
    """Hyperparameters, saved with the weights. `snr_db` sets σ² = 10^(-snr_db/10) (data
    normalised to unit variance): the decoder's variance, i.e. the distortion aimed at. K is
    the lattice's size, set by `train_temporal` from the data (0 before).
    `estimator`: "st" (straight-through Gumbel-Softmax) or "relaxed" (soft samples in
    training). `gates` False is the paper's baseline: always L codes. `context` False codes
    every measurement as a key measurement (no temporal context)."""

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
    steps: int = 300
    batch: int = 512
    lr: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ("st", "relaxed"):
            raise ValueError(f"estimator must be 'st' or 'relaxed', got {self.estimator!r}")
        if not (self.D >= 1 and self.L >= 1 and self.K >= 0 and self.steps >= 0):
            raise ValueError(f"D and L must be positive, K and steps not negative: {self}")

    @property
    def sigma2(self) -> float:
        return 10.0 ** (-self.snr_db / 10.0)


class TemporalSDLGM(nn.Module):
    """Codebook C (shape: [K, D]) and key words (shape: [KEY_WORDS, D]), both fixed; code
    priors per kind of measurement (key, context) and gate priors per slot (learned); the
    sequential slot encoder."""

    def __init__(self, cfg: TemporalConfig, codebook: torch.Tensor, keys: torch.Tensor) -> None:
        super().__init__()
        if codebook.shape != (cfg.K, cfg.D) or keys.ndim != 2 or keys.shape[1] != cfg.D:
            raise ValueError(
                f"codebook must be [{cfg.K}, {cfg.D}] and key words [*, {cfg.D}], got "
                f"{list(codebook.shape)} and {list(keys.shape)}"
            )
        self.cfg = cfg
        self.register_buffer("codebook", codebook.float())
        self.register_buffer("keys", keys.float())
        self.code_prior = nn.Parameter(torch.zeros(2, cfg.K))  # [key, context] logits
        self.gate_prior = nn.Parameter(torch.zeros(2, cfg.L))  # logit of P(s_l = 1)

    def pruned(self, keep: np.ndarray) -> TemporalSDLGM:
        """The model with only the words `keep` (int64 indices), priors carried over: dead
        words go, and the moves they coded fall to the words that stay."""
        cfg = replace(self.cfg, K=len(keep))
        model = TemporalSDLGM(cfg, self.codebook[torch.from_numpy(keep)].clone(), self.keys)
        with torch.no_grad():
            model.code_prior.copy_(self.code_prior[:, torch.from_numpy(keep)])
            model.gate_prior.copy_(self.gate_prior)
        return model

    def key_word(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The nearest key word (int64, [B]) to each measurement (x, mask: [B, D])."""
        dist = ((x.unsqueeze(1) - self.keys.unsqueeze(0)) ** 2 * mask.unsqueeze(1)).sum(-1)
        return dist.argmin(-1)

    def slot_logits(
        self, r: torch.Tensor, mask: torch.Tensor, key: torch.Tensor, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual r, mask (shape: [B, D]), key ([B], 1 = key measurement) -> code logits
        alpha ([B, K]), the gate's "on" logit ([B]) and each word's gain ([B, K])."""
        cfg = self.cfg
        book = self.codebook
        dist = ((r.unsqueeze(1) - book.unsqueeze(0)) ** 2 * mask.unsqueeze(1)).sum(-1)
        gain = ((r**2) * mask).sum(-1, keepdim=True) - dist
        kind = (1 - key).long()  # 0 key, 1 context
        log_prior = F.log_softmax(self.code_prior[kind], dim=-1)
        alpha = gain / (2 * cfg.sigma2) + log_prior
        # A gate is worth opening when the code's expected log-likelihood gain beats its rate.
        value = (F.softmax(alpha, dim=-1) * alpha).sum(-1)
        return alpha, value + self.gate_prior[kind, slot], gain

    def encode(
        self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inference: x, p, mask ([B, D]), key ([B]) -> codes (int64, [B, L]) and gates
        (bool, [B, L]); slot l codes what slots < l left; p of a key measurement is its key
        word, and it opens at most L - 1 gates. Gates close for good: the open
        slots are a prefix, and the code is the multiset of their words."""
        r = (x - p) * mask
        alive = torch.ones(key.shape, dtype=torch.bool)
        limit = self.cfg.L - key  # a key measurement's key word is one of its L
        codes, gates = [], []
        for slot in range(self.cfg.L):
            alpha, gate, gain = self.slot_logits(r, mask, key, slot)
            c = alpha.argmax(-1)
            alive = alive & (slot < limit)
            if self.cfg.gates:
                # A word that would not bring x̂ closer to x is never sent: the error of a
                # measurement only shrinks slot by slot, so the closed loop cannot drift.
                helps = gain.gather(1, c.unsqueeze(1)).squeeze(1) > 0
                alive = alive & (gate > 0) & helps
            r = r - alive.unsqueeze(-1) * self.codebook[c] * mask
            codes.append(c)
            gates.append(alive)
        return torch.stack(codes, 1), torch.stack(gates, 1)

    def decode(self, p: torch.Tensor, codes: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """p ([B, D]), codes ([B, L]), gates ([B, L]) -> x̂ = p + sum of the open codewords."""
        return p + (self.codebook[codes] * gates.unsqueeze(-1)).sum(1)

    def loss(
        self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, key: torch.Tensor, tau: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per measurement (nats) with Gumbel-Softmax samples of codes and
        gates; also the mean distortion and rate for the log."""
        cfg = self.cfg
        hard = cfg.estimator == "st"
        r = (x - p) * mask
        kind = (1 - key).long()
        rate = torch.zeros(x.shape[0])
        alive = torch.ones(x.shape[0])
        log_prior = F.log_softmax(self.code_prior[kind], -1)
        for slot in range(cfg.L):
            alive = alive * (slot < cfg.L - key).float()
            alpha, gate, _ = self.slot_logits(r, mask, key, slot)
            c = _sample(alpha, tau, hard)
            q_on = torch.sigmoid(gate) if cfg.gates else torch.ones_like(gate)
            on = torch.ones_like(gate)
            if cfg.gates:
                prior_on = torch.sigmoid(self.gate_prior[kind, slot])
                rate = rate + alive * bernoulli_kl(q_on, prior_on)
                on = _sample(torch.stack([torch.zeros_like(gate), gate], -1), tau, hard)[:, 1]
            q_c = F.softmax(alpha, -1)
            kl_c = (q_c * (torch.log(q_c + 1e-12) - log_prior)).sum(-1)
            rate = rate + alive * q_on * kl_c
            alive = alive * on
            r = r - alive.unsqueeze(-1) * (c @ self.codebook) * mask
        distortion = (r**2).sum(-1)
        loss = distortion / (2 * cfg.sigma2) + rate
        return loss.mean(), {
            "mse": float(distortion.detach().mean()) / cfg.D,
            "rate_bits": float(rate.detach().mean()) / math.log(2),
        }


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


def lattice_words(pairs: Pairs, step: float) -> torch.Tensor:
    """One-KPI moves (shape: [K, D]): for each KPI and sign, ``±step, ±2 step, ...`` up to
    the largest level that at least a MIN_USES share of that KPI's nonzero training moves
    reach (at least one level), KPI by KPI, up before down. A move beyond the top level takes
    more than one word; levels nobody uses are not in the book."""
    r = ((pairs.x - pairs.prev) * pairs.mask).numpy()
    words = []
    for j in range(r.shape[1]):
        q = np.rint(r[:, j] / step)
        q = q[q != 0]
        for sign in (1.0, -1.0):
            mag = np.sort(q[np.sign(q) == sign] * sign)
            top = int(mag[int(len(mag) * (1 - MIN_USES))]) if len(mag) else 1
            for level in range(1, max(top, 1) + 1):
                w = np.zeros(r.shape[1], dtype=np.float32)
                w[j] = sign * level * step
                words.append(w)
    return torch.from_numpy(np.stack(words))


def key_words(pairs: Pairs, seed: int) -> torch.Tensor:
    """KEY_WORDS whole-measurement words (shape: [KEY_WORDS, D]): k-means centroids of the
    fully observed training measurements (scikit-learn), fewer when there are few rows."""
    from sklearn.cluster import MiniBatchKMeans

    full = pairs.x[pairs.mask.bool().all(-1)].numpy()
    rows = full if len(full) else pairs.x.numpy()
    k = max(1, min(KEY_WORDS, len(rows)))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=2048, max_iter=20)
    return torch.from_numpy(km.fit(rows[:KMEANS_ROWS]).cluster_centers_).float()


def train_temporal(
    cfg: TemporalConfig, xs: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> TemporalSDLGM:
    """Fit the codec on training sessions (normalised, 0 where missing): the lattice from
    the data, then the priors by the ELBO. The returned model's cfg carries the lattice's K."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = make_pairs(xs, masks)
    words = lattice_words(pairs, lattice_step(cfg.snr_db))
    cfg = replace(cfg, K=len(words))
    model = TemporalSDLGM(cfg, words, key_words(pairs, cfg.seed))
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
        x_hat = model.decode(p, c, s)
        codes.append(c)
        gates.append(s)
        keys.append(kw)
        recon.append(x_hat)
        prev = x_hat
    C, S, W = torch.stack(codes, 1), torch.stack(gates, 1), torch.stack(keys, 1)
    R = torch.stack(recon, 1)
    out = []
    for i, (x, _) in enumerate(frames):
        n = len(x)
        w = W[i, :n].numpy()
        out.append(Codes(C[i, :n].numpy(), S[i, :n].numpy(), w >= 0, w, R[i, :n].double().numpy()))
    return out
