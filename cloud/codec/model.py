"""The SDLGM codec: a measurement becomes a bag of at most L codewords out of K.

Following "Learning Sparsity of Representations with Discrete Latent Variables" (SDLGM): an
MLP trunk reads the normalised, masked measurement ``[x * mask, mask]`` and emits feature logits
alpha (shape: [L, K]) and gate logits beta (shape: [L, 2]). Training samples
``c_l ~ GumbelSoftmax_K(alpha_l)`` and ``s_l ~ GumbelSoftmax_2(beta_l)``; the decoder sees the
count vector ``z = sum_l s_l c_l`` (shape: [K]). Inference is deterministic:
``c_l = argmax alpha_l``, ``s_l = [beta_l1 > beta_l0]``, so a code never has more than L
nonzeros and uses fewer where the gates close. The KPI predictor reads the counts of the last
W measurements; the same predictor architecture over raw windows is the ceiling.
"""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...shared.errors import ModelMismatchError
from ...shared.manifest import KpiNorm
from .normaliser import CLIP, Normaliser, TargetScaler

__all__ = [
    "OBJECTIVES",
    "SDLGM",
    "Checkpoint",
    "EdgeEncoder",
    "Encoder",
    "ModelConfig",
    "Predictor",
    "RawPredictor",
    "TrainTerms",
    "bernoulli_kl",
]

_MIN_SCALE = 0.02  # floor of the learned per-KPI likelihood scale (normalised units)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an SDLGM from its state dict."""

    D: int
    L: int = 4
    K: int = 128
    window: int = 8
    hidden: int = 256
    depth: int = 2
    pred_embed: int = 64
    pred_hidden: int = 256
    likelihood: Literal["gaussian", "student"] = "gaussian"
    student_df: float = 4.0
    clip: float = CLIP
    logit_scale: float = 15.0
    gate_bias: float = 2.0
    # Code slots (0: L). With more slots than L, inference keeps the L open gates with the
    # widest margin: the adaptive sparsity schedule trains with a budget falling from
    # `slots` to L (see `cloud.training.loop`).
    slots: int = 0
    # What shapes the codes (see `OBJECTIVES`); "conditional" adds the recognition encoder.
    objective: Literal["generative", "discriminative", "conditional"] = "generative"

    @property
    def n_slots(self) -> int:
        return self.slots or self.L


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """``[x * mask, mask]`` (shape: [N, 2D]) -> alpha (shape: [N, S, K]), beta ([N, S, 2]),
    for S = cfg.n_slots code slots (L unless the sparsity schedule is adaptive).

    The gate head (the paper's sparsity net) shares the trunk with the feature head. `inputs`
    overrides D (the recognition encoder of the conditional objective also reads the target).
    """

    def __init__(self, cfg: ModelConfig, inputs: int | None = None) -> None:
        super().__init__()
        self.L, self.K = cfg.n_slots, cfg.K
        self.trunk = _mlp([2 * (inputs or cfg.D)] + [cfg.hidden] * cfg.depth)
        self.features = nn.Linear(cfg.hidden, self.L * cfg.K)
        self.gates = nn.Linear(cfg.hidden, self.L * 2)
        self.scale = cfg.logit_scale
        with torch.no_grad():  # gates start open (beta_1 - beta_0 = gate_bias)
            self.gates.bias.view(self.L, 2)[:, 1] += cfg.gate_bias

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.trunk(torch.cat([z * mask, mask], dim=-1)))
        alpha = self.features(h).reshape(-1, self.L, self.K) * self.scale
        beta = self.gates(h).reshape(-1, self.L, 2)
        return alpha, beta


class Predictor(nn.Module):
    """Windows (shape: [N, W, F]) -> the scaled target h steps ahead (shape: [N]).

    Each step is embedded by one shared linear map (for counts: a sum of codeword
    embeddings), then an MLP reads the W embeddings in order. With `skip`, feature `skip` of
    the last step (the target now, in the target's scale) is added to the output, so the MLP
    learns the change from persistence rather than the target's whole heavy-tailed range.
    """

    def __init__(
        self, features: int, window: int, embed: int, hidden: int, skip: int | None = None
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, embed)
        self.head = _mlp([window * embed, hidden, hidden, 1])
        self.skip = skip

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.relu(self.embed(windows)).flatten(1)).squeeze(-1)
        return out if self.skip is None else out + windows[:, -1, self.skip]


class RawPredictor(nn.Module):
    """The ceiling: the code predictor's architecture over raw normalised KPI windows.

    Per step it reads ``[z * mask, mask]`` and, when the target is one of the KPIs (so the
    raw measurement holds it anyway), the target in its own scale and whether it is observed
    -- the raw counterpart of the decoded KPIs and nowcast the code predictor reads.
    """

    def __init__(self, D: int, window: int, embed: int, hidden: int, with_target: bool) -> None:
        super().__init__()
        self.config = {
            "D": D,
            "window": window,
            "embed": embed,
            "hidden": hidden,
            "with_target": with_target,
        }
        features = 2 * D + (2 if with_target else 0)
        self.net = Predictor(features, window, embed, hidden, 2 * D if with_target else None)

    def forward(
        self, z: torch.Tensor, mask: torch.Tensor, y_now: torch.Tensor, y_seen: torch.Tensor
    ) -> torch.Tensor:
        """z, mask (shape: [N, W, D]), y_now, y_seen ([N, W]) -> scaled target ([N])."""
        parts = [z * mask, mask]
        if self.config["with_target"]:
            parts += [(y_now * y_seen).unsqueeze(-1), y_seen.unsqueeze(-1)]
        return self.net(torch.cat(parts, dim=-1))


OBJECTIVES = ("generative", "discriminative", "conditional")


@dataclass
class TrainTerms:
    """One stochastic pass: counts ([N, K]), nowcast and per-row loss terms ([N] each).

    `prior_counts` ([N, K]) are codes drawn from the edge's encoder p(z | x) when the codes
    of `counts` came from the conditional objective's recognition encoder q(z | x, y).
    `open` ([N]) is the expected number of open gates, sum_l q(s_l = 1): what a price per
    sent code is charged on."""

    counts: torch.Tensor
    nowcast: torch.Tensor
    nll: torch.Tensor
    kl_gate: torch.Tensor
    kl_code: torch.Tensor
    usage: torch.Tensor
    gates_on: torch.Tensor
    open: torch.Tensor
    prior_counts: torch.Tensor | None = None


class SDLGM(nn.Module):
    """Encoder, decoder, learned prior pi and likelihood scales, and the code predictor."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        # D KPI means and, last, the target now (scaled raw units): the nowcast makes the
        # code keep the target as precisely as raw-unit errors need (a log1p KPI otherwise
        # gets its precision spread evenly over orders of magnitude).
        self.decoder = _mlp([cfg.K] + [cfg.hidden] * cfg.depth + [cfg.D + 1])
        features = cfg.K + cfg.D + 1  # counts, decoded KPIs, nowcast (the skip feature)
        self.predictor = Predictor(
            features, cfg.window, cfg.pred_embed, cfg.pred_hidden, skip=features - 1
        )
        self.log_scale = nn.Parameter(torch.zeros(cfg.D))
        self.pi_logit = nn.Parameter(torch.zeros(()))
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
        # q(z | x, y): reads the measurement and the target h steps ahead (training only).
        self.recognition = Encoder(cfg, cfg.D + 1) if cfg.objective == "conditional" else None

    def decode(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts (shape: [N, K]) -> KPI means (normalised, [N, D]) and the nowcast ([N])."""
        out = self.decoder(counts)
        return out[:, :-1], out[:, -1]

    def predict(self, count_windows: torch.Tensor) -> torch.Tensor:
        """Count windows (shape: [N, W, K]) -> the scaled target at t + h (shape: [N]).

        Each step is read as its counts and what the decoder makes of them (KPIs and the
        nowcast), so the predictor starts from the decoded values instead of relearning them.
        """
        decoded = self.decoder(count_windows)
        return self.predictor(torch.cat([count_windows, decoded], dim=-1))

    def predict_sequence(self, counts: torch.Tensor) -> torch.Tensor:
        """Counts of consecutive measurements (shape: [R, K], oldest first) -> the scaled
        target for each window of W of them ([R - W + 1]), the same values as `predict` on
        those windows. Each measurement is decoded and embedded once, not once per window
        it is in: about three times faster for W = 8 (scripts/bench_ingest.py's profile)."""
        p, w = self.predictor, self.cfg.window
        features = torch.cat([counts, self.decoder(counts)], dim=-1)
        steps = torch.relu(p.embed(features))  # [R, E]
        windows = steps.unfold(0, w, 1).transpose(1, 2).flatten(1)  # [R - W + 1, W * E]
        out = p.head(windows).squeeze(-1)
        return out if p.skip is None else out + features[w - 1 :, p.skip]

    def nll(self, z: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Masked negative log-likelihood per row (shape: [N]) of z under the decoder."""
        scale = self.log_scale.exp().clamp(min=_MIN_SCALE)
        r = (z - mean) / scale
        if self.cfg.likelihood == "student":
            nu = self.cfg.student_df
            const = math.lgamma(nu / 2) - math.lgamma((nu + 1) / 2) + 0.5 * math.log(nu * math.pi)
            per = const + (nu + 1) / 2 * torch.log1p(r**2 / nu) + scale.log()
        else:
            per = 0.5 * r**2 + scale.log() + 0.5 * math.log(2 * math.pi)
        return (per * mask).sum(-1)

    def sample(
        self,
        z: torch.Tensor,
        mask: torch.Tensor,
        tau_c: float,
        tau_s: float,
        hard: bool,
        noise: float = 1.0,
        budget: int | None = None,
        label: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TrainTerms:
        """One relaxed (or straight-through) pass over rows z, mask (shape: [N, D]).

        `noise` scales the Gumbel noise (1: the paper's sampling; towards 0: the argmax
        codes the edge will send). `budget` caps the open gates per row (the slots with the
        widest gate margin; None: every slot may open). `label` (the scaled target h steps
        ahead and whether it is observed, [N] each) is the conditional objective's: the
        codes then come from q(z | x, y) and the KL is taken against the encoder p(z | x).
        """
        alpha, beta = self.encoder(z, mask)
        if label is not None and self.recognition is not None:
            y, seen = label
            q_alpha, q_beta = self.recognition(
                torch.cat([z, y[:, None]], -1), torch.cat([mask, seen[:, None]], -1)
            )
        else:
            q_alpha, q_beta = alpha, beta
        allowed = _allowed(q_beta, budget)
        counts, q_c, q_on = self._draw(q_alpha, q_beta, allowed, tau_c, tau_s, hard, noise)
        log_q = q_alpha.log_softmax(-1)
        if q_alpha is alpha:
            # The code of a closed gate is never sent, so its KL is weighted by q(s = 1):
            # KL(q(s, c) || p(s) p(c | s)) with p(c | s = 0) = q(c | s = 0). Closing a gate
            # thus saves that slot's rate, which lets the number of codes adapt.
            kl_code = ((q_c * log_q).sum(-1) + math.log(self.cfg.K)) * q_on
            kl_gate = bernoulli_kl(q_on, torch.sigmoid(self.pi_logit) * allowed)
            prior = None
        else:  # KL(q(s, c | x, y) || p(s, c | x)), the same factorisation
            kl_code = (q_c * (log_q - alpha.log_softmax(-1))).sum(-1) * q_on
            p_allowed = _allowed(beta, budget)
            kl_gate = bernoulli_kl(q_on, beta.softmax(-1)[..., 1] * p_allowed)
            prior = self._draw(alpha, beta, p_allowed, tau_c, tau_s, hard, noise)[0]
        mean, nowcast = self.decode(counts)
        on = (q_beta[..., 1] > q_beta[..., 0]).float() * allowed
        return TrainTerms(
            counts=counts,
            nowcast=nowcast,
            nll=self.nll(z, mask, mean),
            kl_gate=kl_gate.sum(-1),
            kl_code=kl_code.sum(-1),
            usage=_usage_kl(q_c),
            gates_on=on.sum(-1),
            open=q_on.sum(-1),
            prior_counts=prior,
        )

    def _draw(
        self,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        allowed: torch.Tensor,
        tau_c: float,
        tau_s: float,
        hard: bool,
        noise: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled counts ([N, K]), q(c) ([N, S, K]) and q(s = 1) ([N, S]) of slots that
        may open (`allowed`, [N, S]); a slot outside the budget is closed."""
        c = _gumbel_softmax(alpha, tau_c, hard, noise)
        s = _gumbel_softmax(beta, tau_s, hard, noise)[..., 1] * allowed
        q_on = beta.softmax(-1)[..., 1] * allowed
        return (s.unsqueeze(-1) * c).sum(1), alpha.softmax(-1), q_on

    @torch.no_grad()
    def hard_counts(
        self, z: torch.Tensor, mask: torch.Tensor, budget: int | None = None
    ) -> torch.Tensor:
        """Deterministic inference codes as counts (shape: [N, K]) of rows z, mask ([N, D]):
        at most `budget` (default L) open gates, those with the widest margins."""
        alpha, beta = self.encoder(z, mask)
        c = F.one_hot(alpha.argmax(-1), self.cfg.K).to(z.dtype)
        cap = self.cfg.L if budget is None else budget
        s = (beta[..., 1] > beta[..., 0]).to(z.dtype) * _allowed(beta, cap)
        return (s.unsqueeze(-1) * c).sum(1)


def _allowed(beta: torch.Tensor, budget: int | None) -> torch.Tensor:
    """1 for the `budget` slots of each row with the widest gate margin, else 0 (shape:
    [N, S], beta's dtype); all ones when the budget covers every slot (or is None)."""
    slots = beta.shape[-2]
    if budget is None or budget >= slots:
        return torch.ones(beta.shape[:-1], dtype=beta.dtype, device=beta.device)
    top = (beta[..., 1] - beta[..., 0]).topk(budget, dim=-1).indices
    return torch.zeros(beta.shape[:-1], dtype=beta.dtype, device=beta.device).scatter(-1, top, 1.0)


def _gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool, noise: float) -> torch.Tensor:
    """F.gumbel_softmax over the last axis with the Gumbel noise scaled by `noise`."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + noise * gumbel) / tau).softmax(-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def _usage_kl(q_c: torch.Tensor) -> torch.Tensor:
    """sum_l KL(mean_x q(c_l | x) || Uniform(K)) over a batch (q_c shape: [N, L, K]).

    The per-row KL(q(c | x) || Uniform) averaged over the data is I(x; c) plus this
    marginal term (Hoffman & Johnson's "ELBO surgery"). Weighting the marginal part on its
    own keeps every slot using the whole codebook (without it most codewords die: on the
    5G traces each slot used 11-20 of 128) while asking nothing of each row's certainty.
    """
    mean = q_c.mean(0).clamp(min=1e-12)
    return (mean * mean.log()).sum(-1).sum() + q_c.shape[1] * math.log(q_c.shape[-1])


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    q = q.clamp(eps, 1 - eps)
    p = p.clamp(eps, 1 - eps)
    return q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())


class EdgeEncoder(nn.Module):
    """What the edge runs: raw KPIs (float32, shape: [N, D], NaN = missing) -> codes, nnz.

    codes (int64, shape: [N, L]) are ascending and padded with K; nnz (int64, shape: [N]).
    Normalisation and mask are part of the module. Everything after the input cast is
    float64, so the argmax and gate comparisons agree between torch, onnxruntime and any
    edge CPU: float32 kernels sum in different orders (and use FMA or not), so a near-tie
    between two logits can flip a code; in float64 a flip needs a tie to ~1e-15. The weights
    are float32 values, so the cast loses nothing.
    """

    # Buffers, registered in __init__ (nn.Module's __getattr__ alone types them Tensor | Module).
    mean: torch.Tensor
    std: torch.Tensor
    log: torch.Tensor

    def __init__(self, model: SDLGM, normaliser: Normaliser) -> None:
        super().__init__()
        norms = normaliser.norms
        dtype = torch.float64
        self.register_buffer("mean", torch.tensor([n.mean for n in norms], dtype=dtype))
        self.register_buffer("std", torch.tensor([n.std for n in norms], dtype=dtype))
        self.register_buffer("log", torch.tensor([n.log for n in norms], dtype=torch.bool))
        self.clip = float(normaliser.clip)
        self.K, self.L, self.slots = model.cfg.K, model.cfg.L, model.cfg.n_slots
        enc = Encoder(model.cfg)
        enc.load_state_dict(model.encoder.state_dict())
        self.encoder = enc.to(dtype).eval()

    def forward(self, kpis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = kpis.to(torch.float64)
        observed = ~torch.isnan(x)
        x = torch.where(observed, x, torch.zeros_like(x))
        f = torch.where(self.log, torch.log(1.0 + torch.clamp(x, min=0.0)), x)
        z = torch.clamp((f - self.mean) / self.std, -self.clip, self.clip)
        alpha, beta = self.encoder(z, observed.to(torch.float64))
        on = beta[..., 1] > beta[..., 0]
        if self.slots > self.L:  # the L widest gate margins may open, as in training
            on = on & (_allowed(beta, self.L) > 0)
        codes = torch.where(on, alpha.argmax(-1), torch.full_like(on, self.K, dtype=torch.int64))
        codes, _ = torch.sort(codes, dim=-1)  # sent codes first, padding K last
        return codes[:, : self.L], on.to(torch.int64).sum(-1)


CHECKPOINT_FORMAT = 1


@dataclass
class Checkpoint:
    """A trained run: codec with its code predictor, raw ceiling predictor, normalisation."""

    model: SDLGM
    raw_predictor: RawPredictor
    normaliser: Normaliser
    scaler: TargetScaler
    kpis: tuple[str, ...]
    target: str
    horizon: int
    probe_inputs: np.ndarray
    seed: int
    summary: dict[str, Any]

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def save(self, path: Path) -> None:
        raw = self.raw_predictor
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "model_config": asdict(self.cfg),
                "model_state": self.model.state_dict(),
                "raw_config": dict(raw.config),
                "raw_state": raw.state_dict(),
                "norms": [asdict(n) for n in self.normaliser.norms],
                "clip": self.normaliser.clip,
                "target_scaler": asdict(self.scaler),
                "kpis": list(self.kpis),
                "target": self.target,
                "horizon": self.horizon,
                "probe_inputs": self.probe_inputs.astype(np.float64).tolist(),
                "seed": self.seed,
                "summary": self.summary,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Rebuild a checkpoint saved by `save` (eval mode, CPU); ModelMismatchError if unusable."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("format") != CHECKPOINT_FORMAT:
                raise ModelMismatchError(f"{path}: unknown checkpoint format {data.get('format')}")
            model = SDLGM(ModelConfig(**data["model_config"]))
            model.load_state_dict(data["model_state"])
            raw = RawPredictor(**data["raw_config"])
            raw.load_state_dict(data["raw_state"])
            norms = tuple(KpiNorm(**n) for n in data["norms"])
        except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ModelMismatchError(f"cannot load checkpoint {path}: {exc}") from exc
        return cls(
            model=model.eval(),
            raw_predictor=raw.eval(),
            normaliser=Normaliser(norms, float(data["clip"])),
            scaler=TargetScaler(**data["target_scaler"]),
            kpis=tuple(data["kpis"]),
            target=str(data["target"]),
            horizon=int(data["horizon"]),
            probe_inputs=np.array(data["probe_inputs"], dtype=np.float32),
            seed=int(data["seed"]),
            summary=dict(data["summary"]),
        )
