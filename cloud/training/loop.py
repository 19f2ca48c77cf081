"""The training loop behind `train.train_run`: one joint phase, then a fine-tune phase.

Joint phase: each step samples B windows of W consecutive measurements of one session, codes
all B * W measurements with Gumbel-softmax (straight-through by default), and minimises

    NLL(x | decoder(z)) + w_kl(t) * [KL(q(s) || Bernoulli(pi)) + q(s=1) KL(q(c) || U(K))]
    + usage_weight * sum_l KL(mean_x q(c_l | x) || U(K))
    + nowcast_weight * MSE(target now) + pred_weight * MSE(target at t + h)
    + code_cost * E[number of open gates]

beside the raw ceiling predictor's own MSE. Fine-tune phase: the encoder is frozen and the
decoder and predictor learn from the exact codes the edge will send (no noise), which removes
the gap between the relaxed training codes and the argmax inference codes.

The objective (the paper's supervised variants) decides what shapes the codes:
- generative (default): the codes generate both the KPIs and the target, as above;
- discriminative: only the target terms (prediction, nowcast) and the rate shape the codes;
  the decoder still learns the KPIs, from detached codes, so the cloud can show them;
- conditional: in training the codes come from a recognition encoder q(z | x, y) that also
  reads the target h steps ahead, with KL(q(z | x, y) || p(z | x)) against the edge's
  encoder; the prediction and nowcast terms are also taken on codes drawn from p(z | x)
  (the "hybrid" objective of conditional VAEs), as that is the path the edge runs.

With the adaptive sparsity schedule (after SPARLING) the encoder has `slots` > L code
slots and a budget of open gates per measurement that starts at `slots`. At every
validation in the joint phase the budget tightens by a quarter (at least one) when the
validation score held (within `budget_tolerance` of the best seen), and in any case as far
as a linear plan that reaches L at BUDGET_DEADLINE of the joint steps. Only models at the
final budget L can be kept as the best.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..codec.model import SDLGM, Checkpoint, ModelConfig, RawPredictor
from ..codec.normaliser import Normaliser, TargetScaler, Windows
from .options import TrainOptions

__all__ = ["BUDGET_DEADLINE", "Trainer"]

BUDGET_DEADLINE = 0.6  # share of the joint steps by which the adaptive budget reaches L


class _Tensors:
    """A `Windows` on the training device, with the target scaled."""

    def __init__(self, w: Windows, scaler: TargetScaler, device: torch.device) -> None:
        self.z = torch.from_numpy(w.z).to(device)
        self.mask = torch.from_numpy(w.mask).to(device)
        y = scaler.transform(w.y)
        self.y = torch.from_numpy(np.nan_to_num(y, nan=0.0).astype(np.float32)).to(device)
        self.y_seen = torch.from_numpy(np.isfinite(y).astype(np.float32)).to(device)
        self.ends = torch.from_numpy(w.ends).to(device)
        self.offsets = torch.arange(1 - w.window, 1, device=device)
        self.horizon = w.horizon

    def labels(self, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target h steps after each row of the windows ending at `ends` and whether
        it is observed ([B * W] each): what the conditional objective's q(z | x, y) reads."""
        rows = (ends[:, None] + self.offsets).flatten() + self.horizon
        return self.y[rows], self.y_seen[rows]

    def batch(self, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows ending at `ends` ([B]): z, mask (shape: [B, W, D]) and target ([B])."""
        rows = ends[:, None] + self.offsets
        return self.z[rows], self.mask[rows], self.y[ends + self.horizon]

    def raw_predict(self, raw: RawPredictor, ends: torch.Tensor) -> torch.Tensor:
        """The ceiling's scaled prediction (shape: [B]) for the windows ending at `ends`."""
        rows = ends[:, None] + self.offsets
        return raw(self.z[rows], self.mask[rows], self.y[rows], self.y_seen[rows])

    def nowcast_mse(self, ends: torch.Tensor, nowcast: torch.Tensor) -> torch.Tensor:
        """MSE of the nowcast (shape: [B * W]) on the windows' rows with an observed target."""
        rows = (ends[:, None] + self.offsets).flatten()
        seen = self.y_seen[rows]
        return (seen * (nowcast - self.y[rows]) ** 2).sum() / seen.sum().clamp(min=1.0)


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp(min=1e-12))


class Trainer:
    """The training loop: joint SDLGM + code predictor, and the raw ceiling beside it.

    `fit` runs the joint phase (Gumbel-softmax codes, annealed temperature, KL warm-up),
    then the fine-tune phase (encoder frozen; decoder and predictor trained on the exact
    inference codes), validating every `eval_every` steps and keeping the best states.
    """

    def __init__(
        self,
        opts: TrainOptions,
        norm: Normaliser,
        scaler: TargetScaler,
        tw: Windows,
        vw: Windows,
    ) -> None:
        assert opts.hidden is not None and opts.steps is not None
        self.opts, self.norm, self.scaler = opts, norm, scaler
        self.device = torch.device(opts.device)
        cfg = ModelConfig(
            D=len(opts.kpis),
            L=opts.L,
            K=opts.K,
            window=opts.window,
            hidden=opts.hidden,
            likelihood=opts.likelihood,
            slots=opts.slots or 0,
            objective=opts.objective,
        )
        self.model = SDLGM(cfg).to(self.device)
        with_target = opts.target in opts.kpis
        self.raw = RawPredictor(cfg.D, cfg.window, cfg.pred_embed, cfg.pred_hidden, with_target)
        self.raw.to(self.device)
        self.train, self.val = _Tensors(tw, scaler, self.device), _Tensors(vw, scaler, self.device)
        params = [*self.model.parameters(), *self.raw.parameters()]
        self.optim = torch.optim.Adam(params, lr=opts.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optim, T_max=opts.steps, eta_min=opts.lr * 0.05
        )
        self.gen = torch.Generator().manual_seed(opts.seed)
        self.best: dict[str, Any] = {"score": float("inf"), "raw_r2": -float("inf")}
        # the adaptive schedule's budget of open gates, ending at L (None: fixed L slots)
        self.budget: int | None = cfg.n_slots if cfg.n_slots > cfg.L else None
        self.held = float("inf")  # the best validation score at any budget

    def _schedule(self, step: int) -> tuple[float, float, float]:
        """(temperature, noise scale, KL weight) at `step`: exponential annealing of the
        first two, linear warm-up of the KL weight."""
        o, frac = self.opts, step / max(1, (self.opts.steps or 1) - 1)
        tau = o.tau_start * (o.tau_end / o.tau_start) ** frac
        noise = o.noise_end**frac if o.noise_end > 0 else 1.0 - frac
        kl_w = o.kl_weight * min(1.0, frac / o.kl_warmup) if o.kl_warmup > 0 else o.kl_weight
        return tau, noise, kl_w

    def step(self, step: int) -> dict[str, float]:
        o, t, m = self.opts, self.train, self.model
        assert o.batch is not None
        pick = torch.randint(len(t.ends), (o.batch,), generator=self.gen).to(self.device)
        ends = t.ends[pick]
        z, mask, y = t.batch(ends)
        tau, noise, kl_w = self._schedule(step)
        zs, masks = z.flatten(0, 1), mask.flatten(0, 1)
        label = t.labels(ends) if o.objective == "conditional" else None
        terms = m.sample(zs, masks, tau, tau, o.hard, noise, self.budget, label)
        sup = self._sup(terms.counts, y)
        sup_raw = torch.mean((t.raw_predict(self.raw, ends) - y) ** 2)
        kl = (terms.kl_gate + terms.kl_code).mean()
        now = t.nowcast_mse(ends, terms.nowcast)
        nll = terms.nll.mean()
        if o.objective == "discriminative":  # the KPIs must not shape the codes
            nll = m.nll(zs, masks, m.decode(terms.counts.detach())[0]).mean()
        loss = nll + kl_w * kl + o.usage_weight * terms.usage + o.code_cost * terms.open.mean()
        loss = loss + o.pred_weight * sup + o.nowcast_weight * now
        if terms.prior_counts is not None:  # the edge's path p(z | x) predicts too
            prior_now = t.nowcast_mse(ends, m.decode(terms.prior_counts)[1])
            loss = loss + o.pred_weight * self._sup(terms.prior_counts, y)
            loss = loss + o.nowcast_weight * prior_now
        self.optim.zero_grad(set_to_none=True)
        (loss + sup_raw).backward()
        self.optim.step()
        self.sched.step()
        return {
            "loss": loss.item(),
            "nll": nll.item(),
            "kl": kl.item(),
            "sup": sup.item(),
            "sup_raw": sup_raw.item(),
            "tau": tau,
            "noise": noise,
            "kl_w": kl_w,
            "gates_on": float(terms.gates_on.mean()),
            "usage_kl": terms.usage.item(),
            "nowcast": now.item(),
        }

    def _sup(self, counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE of the code predictor on counts of B windows (shape: [B * W, K])."""
        o = self.opts
        return torch.mean((self.model.predict(counts.view(len(y), o.window, -1)) - y) ** 2)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Deterministic codes on the validation sessions (at most the current budget of
        them, L once the adaptive schedule is done): NMSE, nnz and target R²."""
        m, v = self.model.eval(), self.val
        chunks = zip(v.z.split(8192), v.mask.split(8192), strict=True)
        counts = torch.cat([m.hard_counts(z, k, self.budget) for z, k in chunks])
        mean = torch.cat([m.decode(c)[0] for c in counts.split(8192)])
        nmse = float((v.mask * (mean - v.z) ** 2).sum() / (v.mask * v.z**2).sum())
        rows = v.ends[:, None] + v.offsets
        y = v.y[v.ends + v.horizon]
        r2 = _r2(m.predict(counts[rows]), y)
        raw_r2 = _r2(v.raw_predict(self.raw, v.ends), y)
        m.train()
        return {
            "val_nmse": nmse,
            "val_target_r2": r2,
            "val_raw_target_r2": raw_r2,
            "val_nnz": float(counts.sum(-1).mean()),
            "val_codewords": int((counts.sum(0) > 0).sum()),
            "budget": float(self.budget or self.model.cfg.L),
        }

    def _keep_best(self, step: int, val: dict[str, float]) -> None:
        # Reconstruction and prediction count alike: both are a share of variance missed.
        score = val["val_nmse"] + (1 - val["val_target_r2"])
        if self.budget is not None and self.budget > self.model.cfg.L:
            self._tighten(step, score)  # still denser than L: only steers the schedule
        elif score < self.best["score"]:
            keep = {k: val[k] for k in ("val_nmse", "val_target_r2", "val_nnz")}
            state = copy.deepcopy(self.model.state_dict())
            self.best.update(score=score, step=step, model=state, **keep)
        if val["val_raw_target_r2"] > self.best["raw_r2"]:
            raw = copy.deepcopy(self.raw.state_dict())
            self.best.update(raw_r2=val["val_raw_target_r2"], raw=raw)

    def _tighten(self, step: int, score: float) -> None:
        """The adaptive schedule after a validation at `step` scored `score` (lower is better)."""
        assert self.budget is not None and self.opts.steps is not None
        L, slots = self.model.cfg.L, self.model.cfg.n_slots
        held = score <= self.held * (1 + self.opts.budget_tolerance)
        self.held = min(self.held, score)
        progress = min(1.0, step / (BUDGET_DEADLINE * self.opts.steps))
        planned = math.ceil(slots - (slots - L) * progress)
        budget = self.budget - max(1, self.budget // 4) if held else self.budget
        self.budget = max(L, min(budget, planned))

    def _start_finetune(self) -> None:
        """Freeze the encoder; from now on the decoder and predictor see the exact codes."""
        m, t, o = self.model, self.train, self.opts
        m.encoder.requires_grad_(False)
        chunks = zip(t.z.split(8192), t.mask.split(8192), strict=True)
        self.counts = torch.cat([m.hard_counts(z, k) for z, k in chunks])
        params = [*m.decoder.parameters(), *m.predictor.parameters(), m.log_scale]
        self.optim = torch.optim.Adam(params, lr=o.lr * 0.5)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optim, T_max=max(1, o.finetune_steps or 1), eta_min=o.lr * 0.02
        )

    def finetune_step(self, step: int) -> dict[str, float]:
        o, t, m = self.opts, self.train, self.model
        assert o.batch is not None
        pick = torch.randint(len(t.ends), (o.batch,), generator=self.gen).to(self.device)
        ends = t.ends[pick]
        z, mask, y = t.batch(ends)
        counts = self.counts[ends[:, None] + t.offsets]
        mean, nowcast = m.decode(counts.flatten(0, 1))
        nll = m.nll(z.flatten(0, 1), mask.flatten(0, 1), mean).mean()
        sup = torch.mean((m.predict(counts) - y) ** 2)
        loss = nll + o.pred_weight * sup + o.nowcast_weight * t.nowcast_mse(ends, nowcast)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.sched.step()
        return {"loss": loss.item(), "nll": nll.item(), "sup": sup.item()}

    def _phase(self, name: str, steps: int, fn: Any, out: Any, bar: Any) -> None:
        """Run `fn(step)` `steps` times, validating every `eval_every` and at the end."""
        every = self.opts.eval_every or steps
        sums: dict[str, float] = {}
        for step in range(steps):
            for k, val in fn(step).items():
                sums[k] = sums.get(k, 0.0) + val
            bar.update()
            if (step + 1) % every == 0 or step + 1 == steps:
                if step + 1 == steps and self.budget is not None:
                    self.budget = self.model.cfg.L  # the phase ends at the final budget
                n = (step % every) + 1
                row: dict[str, Any] = {
                    "phase": name,
                    "step": step + 1,
                    **{k: s / n for k, s in sums.items()},
                }
                row.update(self.validate(), seconds=round(time.monotonic() - self.started, 2))
                self._keep_best(self.done + step + 1, row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                bar.set_postfix(nmse=f"{row['val_nmse']:.3f}", r2=f"{row['val_target_r2']:.3f}")
                sums = {}
        self.done += steps
        self.model.load_state_dict(self.best["model"])

    def fit(self, log_path: Path) -> dict[str, Any]:
        """Joint training, then the fine-tune on exact codes; the best states are kept."""
        o = self.opts
        assert o.steps is not None and o.finetune_steps is not None
        show = sys.stderr.isatty() if o.progress is None else o.progress
        self.started, self.done = time.monotonic(), 0
        total = o.steps + o.finetune_steps
        with (
            log_path.open("w", encoding="utf-8") as out,
            tqdm(total=total, desc="train", disable=not show, unit="step") as bar,
        ):
            self._phase("joint", o.steps, self.step, out, bar)
            if o.finetune_steps:
                self._start_finetune()
                self._phase("finetune", o.finetune_steps, self.finetune_step, out, bar)
        self.raw.load_state_dict(self.best["raw"])
        keep = ("val_nmse", "val_target_r2", "val_nnz")
        return {
            "steps": o.steps,
            "finetune_steps": o.finetune_steps,
            "best_step": self.best["step"],
            **{k: round(self.best[k], 5) for k in keep},
            "val_raw_target_r2": round(self.best["raw_r2"], 5),
        }

    def checkpoint(self, probes: np.ndarray, summary: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            model=self.model.cpu().eval(),
            raw_predictor=self.raw.cpu().eval(),
            normaliser=self.norm,
            scaler=self.scaler,
            kpis=self.opts.kpis,
            target=self.opts.target,
            horizon=self.opts.horizon,
            probe_inputs=probes,
            seed=self.opts.seed,
            summary=summary,
        )
