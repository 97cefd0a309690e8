"""Typed argument groups of the training modules (LitGPT style): ``model.lora.r``, ``model.optim.learning_rate``, …

The CLI shows each field's docstring as its ``--help`` and checks its type, so a bad value is one ``error:`` line
naming the dotted key. Checkpoints hold the groups as plain dicts (:func:`plain`): ``torch.load(weights_only=True)``
refuses dataclasses and jsonargparse's checked int / float subclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type

#: Nucleus mass: 0 < top_p <= 1.
TopP = restricted_number_type("TopP", float, [(">", 0), ("<=", 1)])
Config = TypeVar("Config")


@dataclass
class LoRAConfig:
    """The adapter trained on the frozen base."""

    r: int = 32
    """LoRA rank."""
    alpha: int = 64
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Linear layers that get an adapter."""


@dataclass
class OptimConfig:
    """The optimizer of the adapter's weights."""

    name: Literal["auto", "adamw", "paged_adamw_8bit"] = "auto"
    """``auto`` = paged 8-bit AdamW where CUDA exists, else AdamW."""
    learning_rate: float = 1e-4
    """Peak LR reached after warmup."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay on the adapter."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine to a floor, per optimizer step (nlicot/schedule.py)."""

    warmup_steps: int = 150
    """Optimizer steps of linear warmup from 0 to the peak (a count, never a ratio)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of the peak, reached at the last step."""
    rewarm_on_extend: bool = False
    """When a resumed run has a longer horizon, warm up again instead of continuing."""


@dataclass
class GenerationConfig:
    """How answers are generated: in ``predict``, in the generation evaluation and for GRPO's samples."""

    max_new_tokens: int = 320
    """Generation budget per answer (a 3-step thought + JSON fits in ~200)."""
    batch_size: int = 32
    """Sequences decoded together (with ``num_samples`` k > 1, one prompt takes k sequences, +1 with
    ``greedy_reference``; GRPO decodes at least its G completions of a prompt together)."""
    num_samples: PositiveInt = 1
    """Chains per example in predict / evaluation. 1 = one greedy chain (``temperature`` / ``top_p`` unused);
    k > 1 = self-consistency: k sampled chains, majority vote, agreement (share of chains voting for the winner)
    as the confidence (ties and parse failures: nlicot/voting.py). GRPO samples its own G (``grpo.num_generations``)."""
    temperature: PositiveFloat = 0.7
    """Sampling temperature (``num_samples`` > 1, and GRPO's samples and log-probs)."""
    top_p: TopP = 0.95
    """Nucleus sampling mass of the sampled chains (1 = off)."""
    seed: int = 0
    """Seed of the sampled chains; chain j of a row draws from a hash of (seed, row id, j), so results do not
    depend on batch size, order or the number of devices."""
    greedy_reference: bool = True
    """With ``num_samples`` > 1, also decode one greedy chain per row in the same batch (shared prefill) and report
    its accuracy as ``greedy_accuracy``; it does not vote."""


def as_config(cls: type[Config], value: Config | dict[str, Any]) -> Config:
    """The group as its dataclass: the CLI passes one, ``load_from_checkpoint`` the dict a checkpoint holds."""
    return cls(**value) if isinstance(value, dict) else value


def plain(config: Any) -> dict[str, Any]:
    """A group as builtin types (what a checkpoint's ``hyper_parameters`` may hold)."""

    def builtin(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        for kind in (int, float, str):
            if isinstance(v, kind):
                return kind(v)
        if isinstance(v, (list, tuple)):
            return type(v)(builtin(x) for x in v) if type(v) in (list, tuple) else list(map(builtin, v))
        return v

    return {f.name: builtin(getattr(config, f.name)) for f in dataclasses.fields(config)}
