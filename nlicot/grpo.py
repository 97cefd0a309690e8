"""GRPO on the SFT adapter: sample G answers per prompt, reward them, push the adapter toward the better ones.

One optimizer micro-batch (``data.micro_batch_size`` prompts P, ``model.grpo.num_generations`` G)::

    P prompts ──sample (eval mode, seeded by step)──► P×G completions ──reward──► r (P×G) = correct + format + brevity
    r ──normalise within each prompt's group──► advantages A = (r − mean_g) / std_g   (0 where a group is uniform)
    [prompt | completion] ──► log π_θ (train mode, with grad), log π_old (sampling policy, no grad),
                              log π_ref (same base, adapter disabled, no grad)
    loss = − Σ_tokens [ min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) − β·k3(π_ref ‖ π_θ) ] / completion tokens of the step,
    ρ = π_θ / π_old

Why each choice:

* **Reference = the same base, no second model in memory**, either with the adapter disabled (``kl_reference:
  base``, peft ``disable_adapter()``: the *pre-SFT* model, so from an SFT adapter the KL starts far above 0 and
  measures the whole adapter) or with the *starting* adapter's weights swapped in for the reference forward
  (``kl_reference: start``, a copy of the adapter only: the KL starts at 0 and measures what GRPO changed, the
  anchor that keeps phenomena the group rewards say nothing about from drifting; benchmarks/README.md, "GRPO").
* **Old log-probs from the sampling policy**: sampling runs in eval mode (no dropout); the policy forward runs
  in train mode. With ``lora_dropout > 0`` the two differ and ρ ≠ 1 even on the first step, which is what the
  clip is for; with no active dropout ρ = 1 exactly and the extra forward is skipped.
* **Token-level mean** (sum over every completion token of the optimizer step / their number) instead of a mean of
  per-completion means: a per-completion mean weighs each token of a short answer more, a hidden length bias
  that would fight the explicit brevity term.
* **Sampling RNG as a function of (generation.seed, row id, optimizer step, chain)**: a resumed run draws the very
  completions an unbroken one would, whatever ran in between (validation, checkpointing).

Everything else is shared with SFT through :class:`nlicot.lora.LoRAModule`'s public API: 4-bit base + LoRA
loading, the token-weighted step, warmup-cosine schedule, adapter-only checkpoints, teacher-forced validation. The
CLI's callbacks add the rest, as for SFT: the RNG streams of exact resume (``TrainingRNG``), the PEFT adapter folder
beside each checkpoint and generation-based validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nlicot.args import as_config, plain
from nlicot.data import NLICoTDataModule, RowDataset
from nlicot.generation import Generated, left_pad, sample_chains
from nlicot.lora import LoRAModule
from nlicot.parsing import extract_prediction

#: Reward terms in the order they are logged; the total is their weighted sum.
REWARD_TERMS = ("correct", "format", "brevity")
_STD_FLOOR = 1e-6


class GRPOSettingsError(RuntimeError):
    """A GRPO setting that cannot work (G < 2, ε ≤ 0, packed prompts …); the CLI prints one line."""


# ------------------------------------------------------------------ rewards and objective (pure functions)
def answer_format_ok(text: str) -> bool:
    """The whole completion is one JSON object with a string ``thought_process`` and a 0/1 ``predicted_label``.

    Stricter than :func:`nlicot.parsing.extract_prediction` on purpose: the parser rescues sloppy answers so
    they can be scored; this term rewards writing the format the task asks for.
    """
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return False
    if not isinstance(obj, dict) or set(obj) != {"thought_process", "predicted_label"}:
        return False
    label = obj["predicted_label"]
    return isinstance(obj["thought_process"], str) and type(label) is int and label in (0, 1)


def reward_terms(
    texts: Sequence[str], num_tokens: Sequence[int], gold: Sequence[int], max_new_tokens: int, brevity_free_tokens: int
) -> dict[str, torch.Tensor]:
    """Per completion: ``correct`` (parsed label == gold, 1/0), ``format`` (1/0), ``brevity`` in [−1, 0].

    Brevity is 0 up to ``brevity_free_tokens`` generated tokens and falls linearly to −1 at ``max_new_tokens``:
    answers of a sensible length are not pushed shorter, long ones are (accuracy falls as thoughts grow).
    """
    labels = [extract_prediction(t).label for t in texts]
    span = max(1, max_new_tokens - brevity_free_tokens)
    return {
        "correct": torch.tensor([float(p is not None and p == g) for p, g in zip(labels, gold, strict=True)]),
        "format": torch.tensor([float(answer_format_ok(t)) for t in texts]),
        "brevity": torch.tensor([-min(1.0, max(0, n - brevity_free_tokens) / span) for n in num_tokens]),
    }


def flat_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards → (P, 1) bool: the groups whose G rewards are all equal (population std below the floor)."""
    return rewards.std(dim=1, keepdim=True, unbiased=False) < _STD_FLOOR


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards → (r − group mean) / group std (population std); 0 for a group whose rewards are all equal.

    The guard matters: dividing a float-noise difference by a float-noise std would turn "no signal" into ±1.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(flat_groups(rewards), torch.zeros_like(rewards), (rewards - mean) / std.clamp(min=_STD_FLOOR))


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate on tokens sampled from π_θ: exp(d) − d − 1, d = log π_ref − log π_θ.

    Unbiased, never negative, and 0 exactly where the two policies agree (Schulman's k3).
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss over completion tokens (N×T tensors, ``advantages`` N, ``mask`` N×T bool).

    Returns the loss (token-level mean over ``mask``) and detached figures: mean KL, the fraction of tokens
    where the clip was active (ρ outside [1−ε, 1+ε] on the side where it stops the update) and mean ratio.
    """
    mask = mask.to(logps.dtype)
    count = mask.sum().clamp(min=1.0)
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logps) if ref_logps is None else k3_kl(logps, ref_logps)
    if kl_coef:
        per_token = per_token + kl_coef * kl
    loss = (per_token * mask).sum() / count
    active = ((ratio > 1.0 + clip_epsilon) & (adv > 0)) | ((ratio < 1.0 - clip_epsilon) & (adv < 0))
    stats = {
        "kl": (kl.detach() * mask).sum() / count,
        "clip_fraction": (active.to(mask.dtype) * mask).sum() / count,
        "ratio": (ratio.detach() * mask).sum() / count,
    }
    return loss, stats


# ------------------------------------------------------------------ data
class GRPODataModule(NLICoTDataModule):
    """NLICoTDataModule whose train batches are lists of prompt rows (``id``, ``label``, ``prompt_ids``, …).

    The order, sharding and mid-epoch resume position come from the parent's sampler unchanged (one row = one
    example, hence ``packing: false``); validation batches stay the parent's (teacher-forced loss on the SFT
    targets, and generation-based accuracy when ``generation_eval.rows`` asks for it).
    """

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.packing:
            raise GRPOSettingsError("data.packing must be false for GRPO: every train row is one prompt to sample")
        super().setup(stage)

    def train_dataloader(self) -> StatefulDataLoader:
        split = self.splits["train"]
        return self.loader("train", train=True, dataset=RowDataset(split.prompt_row, len(split.packs)), collate_fn=list)


# ------------------------------------------------------------------ module
@dataclass
class GRPOConfig:
    """GRPO's own settings; sampling takes ``model.generation`` (temperature, top_p, seed, max_new_tokens, …)."""

    num_generations: int = 8
    """G, completions sampled per prompt (≥ 2: advantages compare within the group)."""
    clip_epsilon: float = 0.2
    """PPO ratio clip ε (> 0)."""
    kl_coef: float = 0.01
    """β of the k3 KL to the reference policy (≥ 0; 0 skips the reference forward)."""
    kl_reference: Literal["base", "start"] = "base"
    """``base`` = the base with the adapter disabled; ``start`` = the adapter GRPO started from (``adapter_path``;
    a fresh LoRA is the base), kept as a frozen copy of the adapter weights."""
    reward_correct: float = 1.0
    """Weight of "parsed label equals gold" (1/0)."""
    reward_format: float = 0.5
    """Weight of "the completion is exactly the JSON answer object" (1/0)."""
    reward_brevity: float = 0.5
    """Weight of the brevity term (0 up to ``brevity_free_tokens``, −1 at ``generation.max_new_tokens``)."""
    brevity_free_tokens: int = 96
    """Generated tokens that cost nothing; must be below ``generation.max_new_tokens``."""


class GRPOModule(LoRAModule):
    """Group Relative Policy Optimisation of the LoRA adapter, reward = correct label + format + brevity."""

    def __init__(self, *args: Any, grpo: GRPOConfig = GRPOConfig(), **kwargs: Any) -> None:  # noqa: B008
        """
        Args:
            grpo: group size, clip, KL and reward weights.
            *args, **kwargs: LoRAModule's arguments (base model, ``lora`` / ``adapter_path``, ``optim``,
                ``schedule``, and ``generation``: GRPO samples with its ``temperature``, ``top_p``, ``seed``,
                ``max_new_tokens`` and ``batch_size``; the policy's log-probs use the same temperature).
                ``adapter_path`` may also be an nlicot ``.ckpt`` file: its LoRA settings and weights are the
                starting point.
        """
        super().__init__(*args, **kwargs)
        self.grpo = as_config(GRPOConfig, grpo)
        self.save_hyperparameters({"grpo": plain(self.grpo)})
        self._last_samples: list[dict[str, Any]] = []
        self._figures: dict[str, float] = {}
        self._start_weights: dict[str, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        """Refuse settings that cannot work, every one at once, before the base model is loaded.

        Here and not in ``__init__``: jsonargparse wraps exceptions raised while it instantiates the class into
        a union-type traceback, and the CLI's one-line ``error:`` would be lost.
        """
        c, max_new = self.grpo, self.generation.max_new_tokens
        problems = []
        if c.num_generations < 2:
            problems.append(f"model.grpo.num_generations={c.num_generations} must be >= 2 (advantages are relative "
                            "to the group: one completion has nothing to be compared with)")
        if c.clip_epsilon <= 0:
            problems.append(f"model.grpo.clip_epsilon={c.clip_epsilon} must be > 0")
        if c.kl_coef < 0:
            problems.append(f"model.grpo.kl_coef={c.kl_coef} must be >= 0")
        if not 0 <= c.brevity_free_tokens < max_new:
            problems.append(f"model.grpo.brevity_free_tokens={c.brevity_free_tokens} must be in "
                            f"[0, model.generation.max_new_tokens={max_new})")
        if stage == "fit" and self._trainer is not None and not isinstance(self.trainer.datamodule, GRPODataModule):
            problems.append("GRPOModule trains on prompt batches: set data.class_path: nlicot.grpo.GRPODataModule")
        if problems:
            raise GRPOSettingsError("; ".join(problems))

    # -------------------------------------------------------------- start adapter
    def configure_model(self) -> None:
        """LoRAModule's loading (an nlicot ``.ckpt`` as ``adapter_path`` brings its LoRA shape and weights).

        With ``kl_reference: start`` the starting adapter is copied here, before a resumed run's checkpoint
        overwrites the live weights: the reference stays what the run started from.
        """
        if self.model is not None:
            return
        super().configure_model()
        if self.grpo.kl_reference == "start":
            self._start_weights = {k: v.clone() for k, v in self.adapter_state_dict().items()}

    # -------------------------------------------------------------- sampling
    def sample(self, rows: Sequence[dict[str, Any]]) -> list[Generated]:
        """G completions per row (row-major: row 0's G first) from the current policy, in eval mode.

        Chain j of a row is drawn from a generator seeded by (``generation.seed``, row id @ optimizer step, j)
        (``nlicot.generation.sample_chains``, prompts prefilled once per group): the draws of a step depend on
        nothing else — not on the batch, the device count, or whatever used the global RNG before — so a resumed
        run samples what the unbroken one did, and a prompt seen again in a later epoch gets fresh samples.
        """
        g, n = self.generation, self.grpo.num_generations
        keys = [f"{r['id']}@{self.global_step}" for r in rows]
        chains = sample_chains(self.model, self.tokenizer, [r["prompt_ids"] for r in rows], keys,
                               num_samples=n, temperature=g.temperature, top_p=g.top_p, seed=g.seed,
                               max_new_tokens=g.max_new_tokens, batch_size=max(g.batch_size, n))
        return [c for chain in chains for c in chain.samples]

    # -------------------------------------------------------------- log-probs
    def _layout(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Generated]
    ) -> dict[str, torch.Tensor]:
        """[left-padded prompt | completion, right-padded] for every completion (prompt i repeated G times).

        A completion that ended by EOS keeps the EOS: stopping is one of the policy's choices.
        """
        eos = self.tokenizer.eos_token_id
        g = self.grpo.num_generations
        answer = [c.token_ids + ([eos] if c.finish_reason == "eos" else []) for c in completions]
        prompt_ids, prompt_mask = left_pad([prompts[i // g] for i in range(len(completions))], eos)
        width = max(1, max(len(a) for a in answer))
        comp = torch.full((len(answer), width), eos, dtype=torch.long)
        comp_mask = torch.zeros((len(answer), width), dtype=torch.bool)
        for i, a in enumerate(answer):
            comp[i, : len(a)] = torch.as_tensor(a, dtype=torch.long)
            comp_mask[i, : len(a)] = True
        attention = torch.cat([prompt_mask.bool(), comp_mask], dim=1)
        positions = (attention.long().cumsum(-1) - 1).clamp(min=0)  # what generate used for left padding
        return {k: v.to(self.device) for k, v in dict(
            input_ids=torch.cat([prompt_ids, comp], dim=1), attention_mask=attention.long(), position_ids=positions,
            completion_ids=comp, completion_mask=comp_mask, prompt_width=torch.tensor(prompt_ids.shape[1]),
        ).items()}

    def completion_logps(self, layout: dict[str, torch.Tensor]) -> torch.Tensor:
        """log π(completion token | prefix) at the sampling temperature, N×T (0 where masked).

        The LM head runs on completion positions only, as in SFT: prompts never get vocabulary-wide logits.
        """
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=layout["input_ids"], attention_mask=layout["attention_mask"],
                                    position_ids=layout["position_ids"]).last_hidden_state
        w = int(layout["prompt_width"])
        mask = layout["completion_mask"]
        before = hidden[:, w - 1 : w - 1 + mask.shape[1]]  # position t-1 predicts completion token t
        logits = base.get_output_embeddings()(before[mask]).float() / self.generation.temperature
        chosen = layout["completion_ids"][mask]
        picked = torch.log_softmax(logits, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
        out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
        return out.masked_scatter(mask, picked)

    def reference_logps(self, layout: dict[str, torch.Tensor]) -> torch.Tensor:
        """log π_ref: the base with the adapter off, or the starting adapter's weights swapped in and back.

        The swap writes into the live parameters, so it must run before the policy forward that autograd records
        (an in-place change of a saved tensor would void the backward pass).
        """
        if self._start_weights is None:
            return self._eval_logps(layout, adapter=False)
        self._swap_start_weights()
        try:
            return self._eval_logps(layout, adapter=True)
        finally:
            self._swap_start_weights()

    def _swap_start_weights(self) -> None:
        """Exchange the live LoRA tensors with the kept start copy; twice restores them. No copy is made, so the
        reference forward costs no adapter-sized clone per step."""
        params = dict(self.named_parameters())
        for k, start in self._start_weights.items():
            self._start_weights[k], params[k].data = params[k].data, start

    def _eval_logps(self, layout: dict[str, torch.Tensor], adapter: bool) -> torch.Tensor:
        """No-grad log-probs in eval mode: the sampling policy (``adapter``) or the reference (adapter off)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                if adapter:
                    return self.completion_logps(layout)
                with self.model.disable_adapter():
                    return self.completion_logps(layout)
        finally:
            self.model.train(was_training)

    def _has_active_dropout(self) -> bool:
        return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules())

    # -------------------------------------------------------------- step
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        c = self.grpo
        g = c.num_generations
        prompts = [r["prompt_ids"] for r in batch]
        completions = self.sample(batch)
        gold = [r["label"] for r in batch for _ in range(g)]
        terms = reward_terms([c.text for c in completions], [c.num_tokens for c in completions], gold,
                             self.generation.max_new_tokens, c.brevity_free_tokens)
        reward = c.reward_correct * terms["correct"] + c.reward_format * terms["format"] + c.reward_brevity * terms["brevity"]
        advantages = group_advantages(reward.view(len(batch), g)).view(-1).to(self.device)

        layout = self._layout(prompts, completions)
        ref = self.reference_logps(layout) if c.kl_coef > 0 else None  # before the recorded forward (see there)
        logps = self.completion_logps(layout)
        old = self._eval_logps(layout, adapter=True) if self._has_active_dropout() else logps.detach()
        loss, stats = grpo_loss(logps, old, ref, advantages, layout["completion_mask"], c.clip_epsilon, c.kl_coef)
        self._record(batch, completions, terms, reward, stats)
        # add_to_step's step divides the summed objective by the step's completion tokens on all micro-batches and
        # ranks: a token-level mean over the whole optimizer step.
        count = layout["completion_mask"].sum().to(loss.dtype)
        return self.add_to_step(loss * count.clamp(min=1.0), count, batch_idx)

    def throughput_counts(self, batch: Any) -> tuple[int, int]:
        """Prompt rows carry no packed tokens: nothing for ``train/tokens_per_sec`` / ``packing_efficiency``."""
        return 0, 0

    def _record(self, batch, completions, terms, reward, stats) -> None:
        """Sum this micro-batch's figures into the optimizer step's GRPO figures (logged once per step)."""
        w = self._figures
        n = float(len(completions))
        groups = reward.view(len(batch), -1)
        add = {"reward": reward.sum().item(), "reward_sq": (reward ** 2).sum().item(),
               "completion_tokens": float(sum(c.num_tokens for c in completions)), "n": n, "micro": 1.0,
               "groups": float(len(batch)), "flat_groups": flat_groups(groups).sum().item(),
               **{f"reward_{k}": v.sum().item() for k, v in terms.items()},
               **{k: v.item() for k, v in stats.items()}}
        for key, value in add.items():
            w[key] = w.get(key, 0.0) + value
        g = self.grpo.num_generations
        self._last_samples = [
            {"id": batch[0]["id"], "gold": batch[0]["label"], "text": c.text, "reward": reward[i].item(),
             **{k: terms[k][i].item() for k in REWARD_TERMS}}
            for i, c in enumerate(completions[:g])
        ]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step: LoRAModule's loss, LR and grad norm, then rewards (mean, std, each term),
        KL, clip fraction, completion length, group accuracy and a sample group.

        ``grpo/flat_groups`` is the share of groups whose G rewards were all equal: they carry no gradient.
        """
        super().on_before_optimizer_step(optimizer)
        w, self._figures = self._figures, {}
        if not w:
            return
        n, micro = max(w["n"], 1.0), max(w["micro"], 1.0)
        mean = w["reward"] / n
        figures = {
            "grpo/reward": mean,
            "grpo/reward_std": max(w["reward_sq"] / n - mean**2, 0.0) ** 0.5,
            **{f"grpo/reward_{k}": w[f"reward_{k}"] / n for k in REWARD_TERMS},
            "grpo/group_accuracy": w["reward_correct"] / n,
            "grpo/kl": w["kl"] / micro,
            "grpo/clip_fraction": w["clip_fraction"] / micro,
            "grpo/ratio": w["ratio"] / micro,
            "grpo/completion_tokens": w["completion_tokens"] / n,
            "grpo/flat_groups": w["flat_groups"] / max(w["groups"], 1.0),
        }
        self.log_dict(figures, on_step=True, on_epoch=False)
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_text") and self._last_samples:
            experiment.add_text("grpo/samples", samples_markdown(self._last_samples), self.global_step)


def samples_markdown(samples: Sequence[dict[str, Any]]) -> str:
    """One prompt's group as a Markdown table: reward, its terms, and the completion text."""
    head = f"**{samples[0]['id']}** (gold {samples[0]['gold']})\n\n| reward | correct | format | brevity | completion |"
    cell = [s["text"].replace("|", "/").replace("`", "'").replace("\n", " ") for s in samples]
    rows = [f"| {s['reward']:.3f} | {s['correct']:.0f} | {s['format']:.0f} | {s['brevity']:.3f} | `{c}` |"
            for s, c in zip(samples, cell, strict=True)]
    return "\n".join([head, "|---|---|---|---|---|", *rows])
