"""Warmup-steps + cosine learning rate as a pure function of the optimizer step and a small saved plan.

Why a plan: the seed lost runs to LR spikes on resume and to failed extensions. The plan is everything the
curve depends on, saved in the checkpoint, so

* resume is exact: the restored plan gives every later step the LR an unbroken run would have had;
* extension is smooth: resumed with a different total (more ``max_steps`` / epochs), the cosine is re-anchored
  at the current step and LR and decays from there to the floor over the new horizon — no jump, no second
  warmup, unless ``rewarm`` asks for one (linear from the current LR back to the peak over ``warmup_steps``).

``last_epoch`` of the scheduler is the index of the *next* optimizer step (0 before the first step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class Plan:
    """LR factor (x peak) over steps: linear from (warm_start, warm_from) up to 1.0 at ``anchor``,
    then cosine from (anchor, anchor_factor) down to ``floor`` at ``total``, then flat at the floor."""

    total: int
    floor: float
    warm_start: int = 0
    warm_from: float = 0.0
    anchor: int = 0
    anchor_factor: float = 1.0

    @classmethod
    def initial(cls, warmup_steps: int, total: int, floor: float) -> Plan:
        return cls(total=total, floor=floor, anchor=min(warmup_steps, total))

    def factor(self, step: int) -> float:
        if step < self.anchor:
            span = self.anchor - self.warm_start + 1  # +1: step 0 already trains (nanoGPT's convention)
            return self.warm_from + (1.0 - self.warm_from) * (step - self.warm_start + 1) / span
        if self.total <= self.anchor:  # warmup as long as the run: nothing left to decay over
            return self.floor
        progress = min(1.0, (step - self.anchor) / (self.total - self.anchor))
        return self.floor + (self.anchor_factor - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def extended(self, step: int, total: int, warmup_steps: int, rewarm: bool) -> Plan:
        """The plan after resuming at ``step`` with a new ``total``; continuous at ``step`` unless ``rewarm``."""
        now = self.factor(step)
        if rewarm:
            return replace(self, total=total, warm_start=step, warm_from=now, anchor=step + warmup_steps,
                           anchor_factor=1.0)
        if step < self.anchor:  # still warming up: only the horizon moves
            return replace(self, total=total)
        return replace(self, total=total, anchor=step, anchor_factor=now)


class WarmupCosine(LRScheduler):
    """``torch`` scheduler over :class:`Plan`; step it every optimizer step (Lightning ``interval: step``)."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.0,
        rewarm: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"need warmup_steps >= 0, total_steps >= 1, 0 <= min_lr_ratio <= 1 "
                f"(got {warmup_steps}, {total_steps}, {min_lr_ratio})"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.rewarm = rewarm
        self.plan = asdict(Plan.initial(warmup_steps, total_steps, min_lr_ratio))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = Plan(**self.plan).factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the saved plan; re-anchor it if this run asks for another horizon (an extension)."""
        wanted = (self.warmup_steps, self.total_steps, self.rewarm)
        super().load_state_dict(state_dict)
        self.warmup_steps, self.total_steps, self.rewarm = wanted
        plan = Plan(**self.plan)
        if plan.total != self.total_steps:
            self.plan = asdict(plan.extended(self.last_epoch, self.total_steps, self.warmup_steps, self.rewarm))
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr
            self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
