"""SDLGM with temporal context: closed-loop predictive coding with learned sparse codes.

Telemetry at 1 Hz barely changes between measurements, so the codec codes each measurement
against the decoder's previous reconstruction (the prediction ``p``), not alone:

- prediction ``p_t = x̂_{t-1}``; the first measurement of a frame is a key measurement with
  ``p = 0`` (the training mean), so every frame decodes on its own and a lost frame costs
  only itself (video codecs' key frames);
- the residual ``r = x_t - p_t`` is coded as a bag of at most L codewords from a codebook of
  K: slot l picks ``c_l`` and a gate ``s_l``, and ``x̂_t = p_t + sum_l s_l C[c_l]`` (the
  paper's ``z = sum_l s_l c_l`` read by a linear decoder on top of the prediction);
- the encoder's logits are the model's own posterior, ``alpha_lk = (||r_l||² - ||r_l -
  C_k||²) / 2σ² + log p(k)``, with ``r_l`` the residual left after slots < l, plus a small
  learned MLP correction (the paper's amortised encoder, zero at start); the gate logit
  weighs the best codeword's likelihood gain against its rate, plus a learned correction;
- the loss is the negative ELBO with learned priors: the masked Gaussian NLL of the
  reconstruction with fixed variance σ² (the operating point: σ² = the target distortion)
  + KL(q(c) || p(c)) + KL(q(s) || Bernoulli(π)). With a learned prior the KL terms are the
  code's rate in nats, so training minimises rate + distortion / 2σ², the rate-distortion
  Lagrangian; gates close when a codeword's gain is not worth its bits, so a steady
  measurement costs only its zero count.

Training is per measurement, fully batched: the context is the true previous measurement
plus the noise that reconstruction leaves (uniform, of the target distortion), and key
measurements are mixed in at their share in the stream (1 in FRAME). Coding (`code_frames`)
is exact and closed loop, many frames in parallel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Codes", "TemporalConfig", "TemporalSDLGM", "code_frames", "train_temporal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemporalConfig:
    """Hyperparameters, saved with the weights. `snr_db` sets σ² = 10^(-snr_db/10) (data
    normalised to unit variance): the decoder's variance, i.e. the distortion aimed at.
    `estimator`: "st" (straight-through Gumbel-Softmax) or "relaxed" (soft samples in
    training). `gates` False is the paper's baseline: always L codes. `context` False codes
    every measurement as a key measurement (no temporal context)."""

    D: int
    L: int = 4
    K: int = 128
    snr_db: float = 30.0
    hidden: int = 64
    tau_start: float = 1.0
    tau_end: float = 0.2
    estimator: str = "st"
    gates: bool = True
    context: bool = True
    frame: int = 50
    steps: int = 1500
    batch: int = 1024
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ("st", "relaxed"):
            raise ValueError(f"estimator must be 'st' or 'relaxed', got {self.estimator!r}")
        if not (self.D >= 1 and self.L >= 1 and self.K >= 2 and self.steps >= 1):
            raise ValueError(f"D, L, K and steps must be positive (K >= 2): {self}")

    @property
    def sigma2(self) -> float:
        return 10.0 ** (-self.snr_db / 10.0)


class TemporalSDLGM(nn.Module):
    """Codebook C (shape: [K, D]), code priors per kind of measurement (key, context) and
    gate priors per slot, the amortised corrections, and the sequential slot encoder."""

    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Parameter(torch.randn(cfg.K, cfg.D) * 0.1)
        # Code logits per kind of measurement [key, context] and previous code in this measurement
        # (row K: none yet): one fixed table per previous code, so joint moves cost less.
        self.code_prior = nn.Parameter(torch.zeros(2, cfg.K + 1, cfg.K))
        self.gate_prior = nn.Parameter(torch.zeros(2, cfg.L))  # logit of P(s_l = 1)
        self.correction = nn.Sequential(
            nn.Linear(3 * cfg.D + 1 + cfg.L, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.K + 1),
        )
        nn.init.zeros_(self.correction[2].weight)
        nn.init.zeros_(self.correction[2].bias)

    def log_prior(self, key: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """log p(c | kind, previous code): key ([B]), prev (int64 [B], K = none) -> [B, K]."""
        return F.log_softmax(self.code_prior[(1 - key).long(), prev], dim=-1)

    def slot_logits(
        self,
        r: torch.Tensor,
        p: torch.Tensor,
        mask: torch.Tensor,
        key: torch.Tensor,
        slot: int,
        prev: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual r, prediction p, mask (shape: [B, D]), key ([B], 1 = key measurement),
        previous code (int64 [B]) -> code logits alpha ([B, K]) and the gate's "on" logit."""
        cfg = self.cfg
        w = mask
        dist = ((r.unsqueeze(1) - self.codebook.unsqueeze(0)) ** 2 * w.unsqueeze(1)).sum(-1)
        gain = ((r**2) * w).sum(-1, keepdim=True) - dist  # [B, K]
        kind = (1 - key).long()  # 0 key, 1 context
        log_prior = self.log_prior(key, prev)
        slot_hot = F.one_hot(torch.full_like(kind, slot), cfg.L).float()
        feats = torch.cat([r * w, p, w, key.unsqueeze(-1), slot_hot], dim=-1)
        corr = self.correction(feats)
        alpha = gain / (2 * cfg.sigma2) + log_prior + corr[:, :-1]
        # A gate is worth opening when the code's expected log-likelihood gain beats its rate.
        q = F.softmax(alpha, dim=-1)
        value = (q * (gain / (2 * cfg.sigma2) + log_prior)).sum(-1)
        gate = value + self.gate_prior[kind, slot] + corr[:, -1]
        return alpha, gate

    def encode(
        self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inference: x, p, mask ([B, D]), key ([B]) -> codes (int64, [B, L]) and gates
        (bool, [B, L]); slot l codes what slots < l left."""
        r = (x - p) * mask
        K = self.cfg.K
        prev = torch.full(key.shape, K, dtype=torch.long)
        codes, gates = [], []
        for slot in range(self.cfg.L):
            alpha, gate = self.slot_logits(r, p, mask, key, slot, prev)
            c = alpha.argmax(-1)
            s = gate > 0 if self.cfg.gates else torch.ones_like(gate, dtype=torch.bool)
            r = r - s.unsqueeze(-1) * self.codebook[c] * mask
            prev = torch.where(s, c, prev)
            codes.append(c)
            gates.append(s)
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
        r = (x - p) * mask
        kind = (1 - key).long()
        rate = torch.zeros(x.shape[0])
        prev = torch.full(key.shape, cfg.K, dtype=torch.long)
        for slot in range(cfg.L):
            alpha, gate = self.slot_logits(r, p, mask, key, slot, prev)
            c = _sample(alpha, tau, hard=cfg.estimator == "st")
            if cfg.gates:
                g2 = torch.stack([torch.zeros_like(gate), gate], -1)
                s = _sample(g2, tau, hard=cfg.estimator == "st")[:, 1]
                q_on = torch.sigmoid(gate)
                rate = rate + _bernoulli_kl(q_on, torch.sigmoid(self.gate_prior[kind, slot]))
            else:
                s, q_on = torch.ones(x.shape[0]), torch.ones(x.shape[0])
            q_c = F.softmax(alpha, -1)
            log_prior = self.log_prior(key, prev)
            kl_c = (q_c * (torch.log(q_c + 1e-12) - log_prior)).sum(-1)
            rate = rate + q_on * kl_c
            r = r - s.unsqueeze(-1) * (c @ self.codebook) * mask
            prev = torch.where(s.detach() > 0.5, c.detach().argmax(-1), prev)
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


def _bernoulli_kl(q: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    q, p = q.clamp(eps, 1 - eps), p.clamp(eps, 1 - eps)
    return q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))


@dataclass(frozen=True)
class Pairs:
    """Training measurements with their true predecessor (float32): x, prev, mask ([N, D])."""

    x: torch.Tensor
    prev: torch.Tensor
    mask: torch.Tensor


def make_pairs(xs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Pairs:
    """Consecutive measurements of each session (x: [T, D] normalised, 0 where missing)."""
    x = np.concatenate([a[1:] for a in xs if len(a) > 1])
    prev = np.concatenate([a[:-1] for a in xs if len(a) > 1])
    m = np.concatenate([b[1:] for b in masks if len(b) > 1])
    return Pairs(
        torch.from_numpy(x).float(), torch.from_numpy(prev).float(), torch.from_numpy(m).float()
    )


def _batch(pairs: Pairs, cfg: TemporalConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    idx = torch.randint(len(pairs.x), (cfg.batch,), generator=gen)
    x, prev, mask = pairs.x[idx], pairs.prev[idx], pairs.mask[idx]
    key = (torch.rand(cfg.batch, generator=gen) < 1.0 / cfg.frame).float()
    if not cfg.context:
        key = torch.ones(cfg.batch)
    # The decoder's previous reconstruction misses the truth by about the target distortion.
    half = math.sqrt(3 * cfg.sigma2)
    noise = (torch.rand(prev.shape, generator=gen) * 2 - 1) * half
    p = (prev + noise) * (1 - key).unsqueeze(-1)
    return x, p, mask, key


def _init_codebook(model: TemporalSDLGM, pairs: Pairs, gen: torch.Generator) -> None:
    """Start from one-KPI atoms: each KPI moved up or down by magnitudes in a geometric
    series covering the residuals' range (the words a scalar quantiser would use), the rest
    from real residuals; training then bends them into joint moves where KPIs co-vary."""
    K, D = model.cfg.K, model.cfg.D
    per = K // (2 * D)
    words = []
    if per >= 1:
        mags = torch.linspace(3.0 / per, 3.0, per)
        for j in range(D):
            for sign in (1.0, -1.0):
                w = torch.zeros(per, D)
                w[:, j] = sign * mags
                words.append(w)
    rest = K - 2 * D * per
    if rest:
        idx = torch.randint(len(pairs.x), (rest,), generator=gen)
        words.append((pairs.x[idx] - pairs.prev[idx]) * pairs.mask[idx])
    with torch.no_grad():
        model.codebook.copy_(torch.cat(words))


def _revive(
    model: TemporalSDLGM, counts: torch.Tensor, r: torch.Tensor, gen: torch.Generator
) -> int:
    """Dead codewords (unused since the last check) restart at residuals the model coded
    worst (the codebook reset of VQ training); returns how many were revived."""
    dead = torch.nonzero(counts == 0).squeeze(-1)
    if len(dead) == 0:
        return 0
    worst = torch.argsort((r**2).sum(-1), descending=True)[: max(len(dead), 1) * 4]
    pick = worst[torch.randint(len(worst), (len(dead),), generator=gen)]
    with torch.no_grad():
        model.codebook[dead] = r[pick]
        model.code_prior[..., dead] = model.code_prior.mean(-1, keepdim=True).detach()
    return len(dead)


@torch.no_grad()
def _count_usage(
    model: TemporalSDLGM,
    counts: torch.Tensor,
    x: torch.Tensor,
    p: torch.Tensor,
    mask: torch.Tensor,
    key: torch.Tensor,
) -> None:
    """Add how often each codeword is used on a batch to `counts` ([K])."""
    codes, gates = model.encode(x, p, mask, key)
    counts += torch.bincount(codes[gates], minlength=model.cfg.K).float()


def train_temporal(
    cfg: TemporalConfig, xs: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> TemporalSDLGM:
    """Fit the codec on training sessions (normalised, 0 where missing)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = make_pairs(xs, masks)
    model = TemporalSDLGM(cfg)
    _init_codebook(model, pairs, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    counts = torch.zeros(cfg.K)
    for step in range(cfg.steps):
        tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (step / max(cfg.steps - 1, 1))
        x, p, mask, key = _batch(pairs, cfg, gen)
        loss, info = model.loss(x, p, mask, key, tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step < cfg.steps * 0.8 and step % 50 == 49:
            _count_usage(model, counts, x, p, mask, key)
            if step % 200 == 199:
                revived = _revive(model, counts, (x - p) * mask, gen)
                counts.zero_()
                log.debug("step %d: revived %d dead codewords", step, revived)
        if step % 250 == 0 or step == cfg.steps - 1:
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
    whether it is a key measurement (bool, [N]) and the reconstruction (float64, [N, D])."""

    codes: np.ndarray
    gates: np.ndarray
    key: np.ndarray
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
    codes, gates, recon = [], [], []
    for t in range(n_max):
        key = torch.full((B,), 1.0 if (t == 0 or not cfg.context) else 0.0)
        p = prev * (1 - key).unsqueeze(-1)
        c, s = model.encode(X[:, t], p, M[:, t], key)
        x_hat = model.decode(p, c, s)
        codes.append(c)
        gates.append(s)
        recon.append(x_hat)
        prev = x_hat
    C, S, R = torch.stack(codes, 1), torch.stack(gates, 1), torch.stack(recon, 1)
    out = []
    for i, (x, _) in enumerate(frames):
        n = len(x)
        key = np.zeros(n, dtype=bool)
        key[0 if cfg.context else slice(None)] = True
        out.append(Codes(C[i, :n].numpy(), S[i, :n].numpy(), key, R[i, :n].double().numpy()))
    return out
