"""The multi-label classifiers of `multilabel`: linear baselines and supervised SDLGMs.

Every model maps standardised features x (shape: [N, F]) to label scores in [0, 1]
(shape: [N, C]); a label is predicted where its score exceeds one global threshold chosen on
the validation set (`choose_threshold`). `fit_classifier` trains any of them with Adam and
keeps the epoch with the best validation micro F1.

Baselines (one linear layer each, as in Martins & Astudillo 2016, "From Softmax to
Sparsemax", multi-label section):
- "logistic": one sigmoid per label, binary cross-entropy;
- "softmax": softmax over the labels, cross-entropy against q = y / |y|;
- "sparsemax": sparsemax over the labels, the sparsemax loss against q (`sparsemax_loss`);
  the threshold grid starts at 0, which predicts exactly the sparsemax support.

SDLGM variants (the supervised models of "Learning Sparsity of Representations with
Discrete Latent Variables"): the code of x is a count vector z over K codewords with at most
L nonzeros, from `model.Encoder` (L slots, a Gumbel-Softmax over K each, a gate per slot),
rated as `model.SDLGM.sample` rates it (slot KL weighted by q(on), gate KL against a learned
Bernoulli prior, codebook-usage KL), annealed as `trainer.Trainer` anneals it. A label head
p(y | z) (an MLP, a sigmoid per label) reads the counts; inference uses argmax codes and
gates, so never more than L codes.
- "sdlgm-discriminative": q(z | x) -> z -> BCE(y | z) + rate; x is not reconstructed;
- "sdlgm-generative": z generates both: Gaussian NLL(x | z) + BCE(y | z) + rate;
- "sdlgm-conditional": a recognition encoder q(z | x, y) in training, the prior encoder
  p(z | x) at test time: BCE(y | z ~ q) + NLL(x | z ~ q) + KL(q(z | x, y) || p(z | x)) +
  BCE(y | z ~ p). The last term trains the inference path directly: the "hybrid" objective
  of conditional VAEs (Sohn et al. 2015, "Learning Structured Output Representation using
  Deep Conditional Generative Models").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from entmax import sparsemax
from torch import nn

from ..codec.model import Encoder, ModelConfig, _gumbel_softmax, _usage_kl, bernoulli_kl

__all__ = [
    "BASELINES",
    "MODELS",
    "SDLGM_VARIANTS",
    "Anneal",
    "FitConfig",
    "Fitted",
    "LinearClassifier",
    "SdlgmClassifier",
    "build_classifier",
    "choose_threshold",
    "fit_classifier",
    "sparsemax_loss",
]

BASELINES = ("logistic", "softmax", "sparsemax")
SDLGM_VARIANTS = {
    "sdlgm-discriminative": "discriminative",
    "sdlgm-generative": "generative",
    "sdlgm-conditional": "conditional",
}
MODELS = BASELINES + tuple(SDLGM_VARIANTS)
THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # the validation grid; 0 first
_MIN_SCALE = 0.05  # floor of the learned feature scales (standardised units)


@dataclass(frozen=True)
class FitConfig:
    """Training hyperparameters; L and K matter to the SDLGM variants only."""

    epochs: int = 120
    patience: int = 40  # epochs without a better validation micro F1 before stopping
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    hidden: int = 256
    L: int = 4
    K: int = 64
    logit_scale: float = 15.0
    kl_weight: float = 0.01
    kl_warmup: float = 0.3
    usage_weight: float = 0.1
    tau_start: float = 1.0
    tau_end: float = 0.1
    noise_end: float = 0.1
    code_cost: float = 0.0  # nats per sent code (`TrainOptions.code_cost`)

    def __post_init__(self) -> None:
        sizes = {"epochs": self.epochs, "batch": self.batch, "hidden": self.hidden}
        sizes.update(L=self.L, K=self.K)
        small = [f"{k} = {v}" for k, v in sizes.items() if v < 1]
        if small:
            raise ValueError(f"FitConfig needs positive sizes; got {', '.join(small)}")
        if self.L > self.K:
            raise ValueError(f"FitConfig needs L <= K; got L = {self.L}, K = {self.K}")


@dataclass(frozen=True)
class Anneal:
    """Where training stands: Gumbel temperature, noise scale and KL weight."""

    tau: float
    noise: float
    kl_weight: float

    @classmethod
    def at(cls, cfg: FitConfig, frac: float) -> Anneal:
        """`trainer.Trainer`'s schedule at `frac` in [0, 1] of training: exponential
        annealing of temperature and noise, linear warm-up of the KL weight."""
        tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac
        noise = cfg.noise_end**frac if cfg.noise_end > 0 else 1.0 - frac
        warm = min(1.0, frac / cfg.kl_warmup) if cfg.kl_warmup > 0 else 1.0
        return cls(tau, noise, cfg.kl_weight * warm)


def sparsemax_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The sparsemax loss (Martins & Astudillo 2016, eq. 17) of scores z against a target
    distribution q (both shape: [N, C]) -> [N].

    L(z; q) = -q.z + 1/2 sum_{j in S(z)} (z_j^2 - tau^2) + 1/2 ||q||^2. With p = sparsemax(z)
    = z - tau on the support S, the middle term equals p.z - 1/2 ||p||^2, so
    L = (p - q).z - 1/2 ||p||^2 + 1/2 ||q||^2, whose gradient is p - q (entmax's
    `SparsemaxLoss` takes class indices only, not a distribution).
    """
    p = sparsemax(z, dim=-1)
    return ((p - q) * z).sum(-1) - 0.5 * (p * p).sum(-1) + 0.5 * (q * q).sum(-1)


def _distribution(y: torch.Tensor) -> torch.Tensor:
    """Label sets (shape: [N, C], 0/1) as distributions y / |y| (a row with none stays 0)."""
    return y / y.sum(-1, keepdim=True).clamp(min=1.0)


class LinearClassifier(nn.Module):
    """One linear layer read as logistic, softmax or sparsemax scores (see the module doc)."""

    def __init__(self, kind: str, features: int, labels: int) -> None:
        super().__init__()
        if kind not in BASELINES:
            raise ValueError(f"unknown linear classifier {kind!r}; one of {BASELINES}")
        self.kind = kind
        self.linear = nn.Linear(features, labels)

    def loss(self, x: torch.Tensor, y: torch.Tensor, anneal: Anneal) -> torch.Tensor:
        """Mean training loss of x (shape: [N, F]) with label sets y ([N, C])."""
        z = self.linear(x)
        if self.kind == "logistic":
            return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1).mean()
        if self.kind == "softmax":
            return -(_distribution(y) * z.log_softmax(-1)).sum(-1).mean()
        return sparsemax_loss(z, _distribution(y)).mean()

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Label scores (shape: [N, C]): sigmoids, or the softmax / sparsemax distribution."""
        z = self.linear(x)
        if self.kind == "logistic":
            return torch.sigmoid(z)
        return z.softmax(-1) if self.kind == "softmax" else sparsemax(z, dim=-1)


def _rate(alpha: torch.Tensor, beta: torch.Tensor, pi_logit: torch.Tensor) -> torch.Tensor:
    """Per-row KL of the codes (shape: [N]) against a uniform codebook and a learned
    Bernoulli(pi) gate prior, each slot's code KL weighted by q(on) (`SDLGM.sample`)."""
    log_q = alpha.log_softmax(-1)
    q_on = beta.softmax(-1)[..., 1]
    kl_code = ((log_q.exp() * log_q).sum(-1) + math.log(alpha.shape[-1])) * q_on
    return (kl_code + bernoulli_kl(q_on, torch.sigmoid(pi_logit))).sum(-1)


def _conditional_kl(
    qa: torch.Tensor, qb: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor
) -> torch.Tensor:
    """KL(q(z | x, y) || p(z | x)) per row (shape: [N]) from both encoders' alpha
    ([N, L, K]) and beta ([N, L, 2]): per slot the categorical KL weighted by q(on), plus
    the Bernoulli KL between the gates."""
    log_q, log_p = qa.log_softmax(-1), pa.log_softmax(-1)
    q_on, p_on = qb.softmax(-1)[..., 1], pb.softmax(-1)[..., 1]
    kl_code = (log_q.exp() * (log_q - log_p)).sum(-1) * q_on
    return (kl_code + bernoulli_kl(q_on, p_on)).sum(-1)


class SdlgmClassifier(nn.Module):
    """A supervised SDLGM (see the module doc): `variant` is "discriminative",
    "generative" or "conditional"."""

    def __init__(self, variant: str, features: int, labels: int, cfg: FitConfig) -> None:
        super().__init__()
        if variant not in SDLGM_VARIANTS.values():
            raise ValueError(f"unknown SDLGM variant {variant!r}; one of {SDLGM_VARIANTS}")
        self.variant, self.cfg = variant, cfg
        mc = ModelConfig(
            D=features, L=cfg.L, K=cfg.K, hidden=cfg.hidden, logit_scale=cfg.logit_scale
        )
        self.encoder = Encoder(mc)  # q(z | x), or the prior p(z | x) when conditional
        self.head = nn.Sequential(
            nn.Linear(cfg.K, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, labels)
        )
        self.pi_logit = nn.Parameter(torch.zeros(()))
        if variant != "discriminative":
            self.decoder = nn.Sequential(
                nn.Linear(cfg.K, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, features)
            )
            self.log_scale = nn.Parameter(torch.zeros(features))
        if variant == "conditional":
            self.recognition = Encoder(replace(mc, D=features + labels))

    def _encode(self, enc: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (shape: [N, L, K]) and beta ([N, L, 2]) of dense x ([N, D]): mask all ones."""
        return enc(x, torch.ones_like(x))

    def _sample(self, alpha: torch.Tensor, beta: torch.Tensor, a: Anneal) -> torch.Tensor:
        """Straight-through Gumbel-Softmax counts (shape: [N, K])."""
        c = _gumbel_softmax(alpha, a.tau, True, a.noise)
        s = _gumbel_softmax(beta, a.tau, True, a.noise)[..., 1]
        return (s.unsqueeze(-1) * c).sum(1)

    def _label_nll(self, counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p(y | z) per row (shape: [N])."""
        logits = self.head(counts)
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)

    def _feature_nll(self, counts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gaussian -log p(x | z) per row (shape: [N]), learned per-feature scales."""
        scale = self.log_scale.exp().clamp(min=_MIN_SCALE)
        r = (x - self.decoder(counts)) / scale
        return (0.5 * r**2 + scale.log() + 0.5 * math.log(2 * math.pi)).sum(-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor, anneal: Anneal) -> torch.Tensor:
        """Mean training objective of x (shape: [N, F]) with label sets y ([N, C])."""
        a = anneal
        if self.variant == "conditional":
            return self._conditional_loss(x, y, a)
        alpha, beta = self._encode(self.encoder, x)
        counts = self._sample(alpha, beta, a)
        nll = self._label_nll(counts, y)
        if self.variant == "generative":
            nll = nll + self._feature_nll(counts, x)
        rate = _rate(alpha, beta, self.pi_logit)
        usage = _usage_kl(alpha.softmax(-1))
        loss = (nll + a.kl_weight * rate + self._price(beta)).mean()
        return loss + self.cfg.usage_weight * usage

    def _price(self, beta: torch.Tensor) -> torch.Tensor:
        """code_cost times the expected number of open gates per row (shape: [N])."""
        return self.cfg.code_cost * beta.softmax(-1)[..., 1].sum(-1)

    def _conditional_loss(self, x: torch.Tensor, y: torch.Tensor, a: Anneal) -> torch.Tensor:
        """The hybrid CVAE objective: the posterior q(z | x, y) codes y and x, the prior
        p(z | x) is pulled towards it (KL) and must predict y by itself."""
        qa, qb = self._encode(self.recognition, torch.cat([x, y], dim=-1))
        pa, pb = self._encode(self.encoder, x)
        posterior, prior = self._sample(qa, qb, a), self._sample(pa, pb, a)
        nll = self._label_nll(posterior, y) + self._feature_nll(posterior, x)
        hybrid = self._label_nll(prior, y)
        kl = _conditional_kl(qa, qb, pa, pb)
        usage = _usage_kl(qa.softmax(-1)) + _usage_kl(pa.softmax(-1))
        loss = (nll + hybrid + a.kl_weight * kl + self._price(pb)).mean()
        return loss + self.cfg.usage_weight * usage

    @torch.no_grad()
    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic inference codes of x (shape: [N, F]) as counts ([N, K]):
        argmax codeword per slot, slot sent when its on-logit wins."""
        alpha, beta = self._encode(self.encoder, x)
        c = F.one_hot(alpha.argmax(-1), self.cfg.K).to(x.dtype)
        s = (beta[..., 1] > beta[..., 0]).to(x.dtype)
        return (s.unsqueeze(-1) * c).sum(1)

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Label probabilities p(y | z(x)) (shape: [N, C]) from the inference codes."""
        return torch.sigmoid(self.head(self.counts(x)))


Classifier = LinearClassifier | SdlgmClassifier


def build_classifier(name: str, features: int, labels: int, cfg: FitConfig) -> Classifier:
    """The model called `name` (one of `MODELS`) for `features` inputs and `labels` labels."""
    if name in BASELINES:
        return LinearClassifier(name, features, labels)
    if name in SDLGM_VARIANTS:
        return SdlgmClassifier(SDLGM_VARIANTS[name], features, labels, cfg)
    raise ValueError(f"unknown model {name!r}; one of {MODELS}")


def choose_threshold(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The global threshold t of `THRESHOLDS` whose predictions ``probs > t`` (shape:
    [N, C]) have the best micro F1 against y ([N, C], 0/1): (t, that micro F1); the
    smallest t among ties."""
    pred = probs[None] > THRESHOLDS[:, None, None]
    truth = y[None].astype(bool)
    tp = (pred & truth).sum((1, 2))
    wrong = (pred != truth).sum((1, 2))  # false positives + false negatives
    f1 = np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
    best = int(np.argmax(f1))
    return float(THRESHOLDS[best]), float(f1[best])


@dataclass(frozen=True)
class Fitted:
    """What training chose on validation: the threshold, the (0-based) epoch and its micro
    F1, and how many epochs ran before the patience ran out."""

    threshold: float
    epoch: int
    val_micro_f1: float
    epochs_run: int


def _train_epoch(
    model: Classifier,
    optim: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    cfg: FitConfig,
    gen: torch.Generator,
    step: int,
) -> int:
    """One pass over shuffled batches of `train`, annealed by the global step; the step
    count after it."""
    x, y = train
    total = cfg.epochs * math.ceil(len(x) / cfg.batch)
    model.train()
    for rows in torch.randperm(len(x), generator=gen).split(cfg.batch):
        loss = model.loss(x[rows], y[rows], Anneal.at(cfg, step / max(1, total - 1)))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1
    model.eval()
    return step


def fit_classifier(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: FitConfig,
    seed: int,
) -> Fitted:
    """Train `model` on (x [N, F], y [N, C]) with Adam; after each epoch choose the
    validation threshold and keep the state with the best validation micro F1, stopping
    after `cfg.patience` epochs without one. The model ends in eval mode at that state."""
    torch.manual_seed(seed)  # the Gumbel noise uses the global generator
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, state, step = Fitted(0.5, -1, -1.0, 0), copy.deepcopy(model.state_dict()), 0
    for epoch in range(cfg.epochs):
        step = _train_epoch(model, optim, train, cfg, gen, step)
        threshold, f1 = choose_threshold(model.probs(val[0]).numpy(), val[1].numpy())
        if f1 > best.val_micro_f1:
            best, state = Fitted(threshold, epoch, f1, 0), copy.deepcopy(model.state_dict())
        elif epoch - best.epoch >= cfg.patience:
            break
    model.load_state_dict(state)
    return replace(best, epochs_run=epoch + 1)
