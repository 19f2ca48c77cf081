"""The TopK sparse autoencoder behind the `topk-sae` baseline, and its training.

As openai/sparse_autoencoder and Gao et al. 2024 ("Scaling and evaluating sparse
autoencoders") do it: a pre-encoder bias, TopK over ReLU latents, unit-norm decoder columns
with the gradient along them projected out, tied initialisation (W_enc starts as W_dec
transposed), and the AuxK loss on dead latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["SAE", "SAEOptions", "SAEWeights", "train_sae"]

DECAY_SHARE = 0.3  # the learning rate falls linearly to 0 over this last share of steps


@dataclass(frozen=True)
class SAEWeights:
    """A trained autoencoder in float64: `offset` b_pre (shape: [D]), unit-norm `atoms`
    (shape: [K, D]), the encoder's `enc_weight` (shape: [K, D]) and `enc_bias` ([K])."""

    offset: np.ndarray
    atoms: np.ndarray
    enc_weight: np.ndarray
    enc_bias: np.ndarray


class SAE(nn.Module):
    """TopK autoencoder: `b_pre` (shape: [D]), `W_enc` (shape: [K, D]), `b_enc` (shape: [K]),
    `W_dec` (shape: [D, K]) with unit-norm columns; W_enc starts as W_dec transposed."""

    def __init__(self, b_pre: torch.Tensor, K: int, gen: torch.Generator) -> None:
        super().__init__()
        w = torch.randn(len(b_pre), K, generator=gen)
        w /= w.norm(dim=0)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(K))
        self.b_pre = nn.Parameter(b_pre.clone())

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Rows (shape: [n, D]) -> ReLU latents before TopK (shape: [n, K])."""
        return torch.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)

    def decode(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Sparse latents (vals, idx: [n, k]) -> W_dec z (shape: [n, D]), without b_pre."""
        dense = torch.zeros(len(vals), self.W_dec.shape[1]).scatter(1, idx, vals)
        return dense @ self.W_dec.T

    @torch.no_grad()
    def renormalise_(self) -> None:
        """Unit-norm decoder columns, and no gradient along them (the norm is fixed)."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(dim=0)
            self.W_dec.grad -= along * self.W_dec
        self.W_dec.div_(self.W_dec.norm(dim=0))


@dataclass(frozen=True)
class SAEOptions:
    """Training settings: L latents kept, K latents, Adam steps, batch and lr, AuxK weight
    and width, and the steps without firing after which a latent counts as dead."""

    L: int
    K: int
    steps: int
    batch: int
    lr: float
    aux_coef: float
    aux_k: int
    dead_steps: int


def _aux_loss(
    sae: SAE,
    latents: torch.Tensor,
    resid: torch.Tensor,
    m: torch.Tensor,
    dead: torch.Tensor,
    aux_k: int,
) -> torch.Tensor:
    """AuxK: the top `aux_k` dead latents reconstruct the main residual (resid, m: [n, D]),
    normalised by the residual's own energy."""
    k = min(aux_k, int(dead.sum()))
    vals, idx = latents.masked_fill(~dead, 0.0).topk(k, dim=1)
    err = (sae.decode(vals, idx) - resid) * m
    return (err**2).sum() / (resid**2).sum().clamp_min(1e-12)


def sae_loss(
    sae: SAE,
    x: torch.Tensor,
    m: torch.Tensor,
    since_fired: torch.Tensor,
    opt: SAEOptions,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch (x, m: [batch, D]): the masked reconstruction loss, plus AuxK/32 once some
    latents have not fired for `dead_steps`; and the steps since each latent fired ([K])."""
    latents = sae.latents(x)
    vals, idx = latents.topk(opt.L, dim=1)
    resid = (x - sae.decode(vals, idx) - sae.b_pre) * m
    loss = scale * (resid**2).sum() / m.sum().clamp_min(1.0)
    fired = torch.zeros(opt.K, dtype=torch.bool).index_fill(0, idx[vals > 0], True)
    since_fired = torch.where(fired, 0, since_fired + 1)
    dead = since_fired > opt.dead_steps
    if opt.aux_coef > 0 and bool(dead.any()):
        loss = loss + opt.aux_coef * _aux_loss(sae, latents, resid.detach(), m, dead, opt.aux_k)
    return loss, since_fired


def train_sae(x: np.ndarray, mask: np.ndarray, opt: SAEOptions, seed: int) -> SAEWeights:
    """Adam on `sae_loss` over random batches of rows (x, mask: [N, D]), the learning rate
    decaying to 0 over the last steps; the decoder kept unit norm throughout."""
    gen = torch.Generator().manual_seed(seed)
    X, M = torch.from_numpy(x).float(), torch.from_numpy(mask).float()
    observed = np.where(mask, x, np.nan)
    sae = SAE(torch.from_numpy(np.nan_to_num(np.nanmedian(observed, axis=0))).float(), opt.K, gen)
    scale = 1.0 / max(float(np.nanvar(observed, axis=0).mean()), 1e-12)
    adam = torch.optim.Adam(sae.parameters(), lr=opt.lr)
    decay = torch.optim.lr_scheduler.LambdaLR(
        adam, lambda step: min(1.0, (opt.steps - step) / (DECAY_SHARE * opt.steps))
    )
    since_fired = torch.zeros(opt.K, dtype=torch.long)
    for _ in range(opt.steps):
        rows = torch.randint(len(X), (opt.batch,), generator=gen)
        loss, since_fired = sae_loss(sae, X[rows], M[rows], since_fired, opt, scale)
        adam.zero_grad()
        loss.backward()
        sae.renormalise_()
        adam.step()
        decay.step()
        sae.renormalise_()
    atoms = sae.W_dec.detach().double().numpy().T  # unit norm in float64 too
    return SAEWeights(
        offset=sae.b_pre.detach().double().numpy(),
        atoms=atoms / np.linalg.norm(atoms, axis=1, keepdims=True),
        enc_weight=sae.W_enc.detach().double().numpy(),
        enc_bias=sae.b_enc.detach().double().numpy(),
    )
