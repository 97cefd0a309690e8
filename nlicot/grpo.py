"""GRPO on the SFT adapter: sample G answers per prompt, reward them, push the adapter toward the better ones.

One optimizer micro-batch (``data.micro_batch_size`` prompts P, ``model.grpo.num_generations`` G)::

    P prompts ──sample (eval mode, seeded by step)──► P×G completions ──reward──► terms correct, format, brevity
    groups whose G rewards are all equal ──dropped; refilled from further prompts (≤ max_refills rounds, DAPO)
    A = (w_c·correct − mean_g) / scale  +  Σ_shaping w_k·(term_k − mean_g)   (scale: group / batch std or 1)
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
* **Only the task term is std-scaled** (:func:`shaped_advantages`): scaling the summed reward by its group std
  turned a 1-token brevity difference in an all-correct group into a full −2.65 advantage.
* **Flat groups leave the step** (no policy gradient, and not in the token normaliser): their share grows as the
  policy improves, and counting them shrank the effective step with it. The KL anchor then acts on the kept
  groups' tokens only (DAPO drops them whole too).
* **Sampling RNG as a function of (generation.seed, row id, optimizer step, chain)**: a resumed run draws the very
  completions an unbroken one would, whatever ran in between (validation, checkpointing).

Everything else is shared with SFT through :class:`nlicot.lora.LoRAModule`'s public API: 4-bit base + LoRA
loading, the token-weighted step, warmup-cosine schedule, adapter-only checkpoints, teacher-forced validation. The
CLI's callbacks add the rest, as for SFT: the RNG streams of exact resume (``TrainingRNG``), the PEFT adapter folder
beside each checkpoint and generation-based validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nlicot.args import as_config, plain
from nlicot.data import NLICoTDataModule, RowDataset
from nlicot.generation import Generated, left_pad, sample_chains
from nlicot.grpo_objective import (
    REWARD_TERMS,
    GRPOSettingsError,
    adapter_sha256,
    flat_groups,
    grpo_loss,
    refill_indices,
    reward_terms,
    shaped_advantages,
)
from nlicot.lora import CheckpointMismatchError, LoRAModule


# ------------------------------------------------------------------ data
class GRPODataModule(NLICoTDataModule):
    """NLICoTDataModule whose train batches are lists of prompt rows (``id``, ``label``, ``prompt_ids``, …).

    The order, sharding and mid-epoch resume position come from the parent's sampler unchanged (one row = one
    example, hence ``packing: false``); validation batches stay the parent's (teacher-forced loss on the SFT
    targets, and generation-based accuracy when ``generation_eval.rows`` asks for it).
    """

    def __init__(self, *args: Any, prompts: Literal["all", "label_only", "with_thought"] = "all", **kwargs: Any) -> None:
        """
        Args:
            prompts: which train rows GRPO samples from: ``all`` (GRPO needs only the label), ``label_only`` (the
                rows without a thought: the label-only recipe's second half, configs/grpo_labels.yaml) or
                ``with_thought``. Validation and test keep the rows with a thought (their loss needs the target).
            *args, **kwargs: NLICoTDataModule's arguments.
        """
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()

    def row_kind(self, split: str) -> str:
        return self.hparams.prompts if split == "train" else super().row_kind(split)

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
    reward_verdict: float = 0.0
    """Weight of "step 3 states the verdict the label chose" (1/0, :func:`nlicot.thoughts.stated_verdict`)."""
    brevity_free_tokens: int = 96
    """Generated tokens that cost nothing; must be below ``generation.max_new_tokens``."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """How the correctness advantage is scaled (TRL's meaning): ``group`` = by each group's std, ``batch`` = by the
    micro-batch's std, ``none`` = not at all. Format, brevity and verdict are never scaled, only centred in their
    group (:func:`shaped_advantages`: a 1-token length difference in an all-correct group stays a 0.01 advantage)."""
    max_refills: int = 0
    """Dynamic sampling (DAPO): a group whose G rewards are all equal is dropped from the step, and up to this many
    times per micro-batch further prompts (seeded draws from the train split) are sampled to refill the P slots.
    0 = no refill (flat groups are still dropped: they no longer count in the step's token normaliser)."""


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
        self._start_sha256: str | None = None

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
        if c.max_refills < 0:
            problems.append(f"model.grpo.max_refills={c.max_refills} must be >= 0")
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
        if self.hparams.adapter_path:  # a fresh LoRA is the base (B = 0): nothing on disk that could change
            self._start_sha256 = adapter_sha256(self.adapter_state_dict())
        if self.grpo.kl_reference == "start":
            self._start_weights = {k: v.clone() for k, v in self.adapter_state_dict().items()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """LoRAModule's adapter-only checkpoint, plus the SHA-256 of the adapter this run started from."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["nlicot"]["grpo_start_sha256"] = self._start_sha256

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a fit whose ``adapter_path`` now holds another adapter than the run started from.

        The start adapter is re-read from ``adapter_path`` on resume (the KL reference with ``kl_reference:
        start``): if that file was overwritten (a new SFT run in the same folder), the resumed run would silently
        anchor to another policy. Only ``fit`` is checked: evaluating a GRPO checkpoint does not use the start.
        """
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("nlicot", {}).get("grpo_start_sha256")
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and saved is not None and saved != self._start_sha256:
            raise CheckpointMismatchError(
                f"model.adapter_path={self.hparams.adapter_path} is not the adapter this run started from (SHA-256 "
                f"{str(self._start_sha256)[:12]}, the checkpoint's start {saved[:12]}): resuming would change the KL "
                "reference; point adapter_path at the original adapter or start a new run")

    # -------------------------------------------------------------- sampling
    def sample(self, rows: Sequence[dict[str, Any]], refill: int = 0) -> list[Generated]:
        """G completions per row (row-major: row 0's G first) from the current policy, in eval mode.

        Chain j of a row is drawn from a generator seeded by (``generation.seed``, row id @ optimizer step, j)
        (``nlicot.generation.sample_chains``, prompts prefilled once per group): the draws of a step depend on
        nothing else — not on the batch, the device count, or whatever used the global RNG before — so a resumed
        run samples what the unbroken one did, and a prompt seen again in a later epoch gets fresh samples.
        Refill round k > 0 of dynamic sampling adds ``+k`` to the key: a row drawn again in the same step is
        sampled afresh.
        """
        g, n = self.generation, self.grpo.num_generations
        keys = [f"{r['id']}@{self.global_step}" + (f"+{refill}" if refill else "") for r in rows]
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
        rows, completions, terms, sampled = self.informative_groups(batch)
        self._record(batch, sampled)
        if not rows:  # every group flat, refills included: no policy gradient at all
            zero = torch.zeros((), device=self.device)
            if self.trainer.world_size > 1:  # DDP all-reduces every gradient: this rank still sends zeros
                return self.add_to_step(sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0, zero,
                                        batch_idx)
            return self.add_to_step(zero.requires_grad_(), zero, batch_idx)  # no gradient anywhere: no update
        weights = {"correct": c.reward_correct, "format": c.reward_format, "brevity": c.reward_brevity,
                   "verdict": c.reward_verdict}
        advantages = shaped_advantages({k: terms[k].view(len(rows), g) for k in weights}, weights, c.scale_rewards)
        advantages = advantages.view(-1).to(self.device)

        layout = self._layout([r["prompt_ids"] for r in rows], completions)
        ref = self.reference_logps(layout) if c.kl_coef > 0 else None  # before the recorded forward (see there)
        logps = self.completion_logps(layout)
        old = self._eval_logps(layout, adapter=True) if self._has_active_dropout() else logps.detach()
        loss, stats = grpo_loss(logps, old, ref, advantages, layout["completion_mask"], c.clip_epsilon, c.kl_coef)
        self._add_figures({**{k: v.item() for k, v in stats.items()}, "used_micro": 1.0})
        # add_to_step's step divides the summed objective by the step's completion tokens on all micro-batches and
        # ranks: a token-level mean over the whole optimizer step — of the groups that carry a signal only (flat
        # ones were dropped above, so their share no longer shrinks the step).
        count = layout["completion_mask"].sum().to(loss.dtype)
        return self.add_to_step(loss * count.clamp(min=1.0), count, batch_idx)

    def informative_groups(self, batch: list[dict[str, Any]]) -> tuple[list, list, dict[str, torch.Tensor], dict]:
        """Sample the batch's groups; drop flat ones and refill from further prompts, at most ``max_refills`` times.

        Returns the P (or fewer) kept rows, their completions (row-major), their reward terms, and everything
        sampled (for the figures: rewards over every sampled completion, flat and refill counts). Refill prompts
        are :func:`refill_indices` draws from the train split keyed by (step, rank, round): deterministic, so a
        resumed run refills with the same prompts and samples.
        """
        c = self.grpo
        g, want = c.num_generations, len(batch)
        rows, completions, kept_terms = [], [], []
        sampled = {"rows": [], "completions": [], "terms": [], "flat": 0, "refills": 0}
        todo, round_ = list(batch), 0
        while todo:
            got = self.sample(todo, refill=round_)
            gold = [r["label"] for r in todo for _ in range(g)]
            terms = reward_terms([x.text for x in got], [x.num_tokens for x in got], gold,
                                 self.generation.max_new_tokens, c.brevity_free_tokens)
            flat = flat_groups(self.reward(terms).view(len(todo), g)).view(-1).tolist()
            sampled["rows"] += todo
            sampled["completions"] += got
            sampled["terms"].append(terms)
            sampled["flat"] += sum(flat)
            for i, is_flat in enumerate(flat):
                if not is_flat and len(rows) < want:
                    rows.append(todo[i])
                    completions += got[i * g : (i + 1) * g]
                    kept_terms.append({k: v[i * g : (i + 1) * g] for k, v in terms.items()})
            if len(rows) >= want or round_ >= c.max_refills:
                break
            round_ += 1
            sampled["refills"] += 1
            split = self.trainer.datamodule.splits["train"]
            key = f"{self.global_step}/{self.global_rank}/{round_}"
            todo = [split.prompt_row(i) for i in refill_indices(len(split.packs), want - len(rows), self.generation.seed, key)]
        terms = {k: torch.cat([t[k] for t in kept_terms]) for k in REWARD_TERMS} if kept_terms else {}
        sampled["terms"] = {k: torch.cat([t[k] for t in sampled["terms"]]) for k in REWARD_TERMS}
        return rows, completions, terms, sampled

    def reward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the terms: what is logged as ``grpo/reward`` and what decides a group is flat."""
        c = self.grpo
        return (c.reward_correct * terms["correct"] + c.reward_format * terms["format"]
                + c.reward_brevity * terms["brevity"] + c.reward_verdict * terms["verdict"])

    def throughput_counts(self, batch: Any) -> tuple[int, int]:
        """Prompt rows carry no packed tokens: nothing for ``train/tokens_per_sec`` / ``packing_efficiency``."""
        return 0, 0

    def _record(self, batch: list[dict[str, Any]], sampled: dict[str, Any]) -> None:
        """Sum this micro-batch's figures (over every sampled completion, refills included) into the step's."""
        terms, completions = sampled["terms"], sampled["completions"]
        reward = self.reward(terms)
        self._add_figures({
            "reward": reward.sum().item(), "reward_sq": (reward ** 2).sum().item(),
            "completion_tokens": float(sum(c.num_tokens for c in completions)), "n": float(len(completions)),
            "groups": float(len(sampled["rows"])), "flat_groups": float(sampled["flat"]),
            "refills": float(sampled["refills"]), **{f"reward_{k}": v.sum().item() for k, v in terms.items()},
        })
        g = self.grpo.num_generations
        self._last_samples = [
            {"id": batch[0]["id"], "gold": batch[0]["label"], "text": c.text, "reward": reward[i].item(),
             **{k: terms[k][i].item() for k in REWARD_TERMS}}
            for i, c in enumerate(completions[:g])
        ]

    def _add_figures(self, add: dict[str, float]) -> None:
        for key, value in add.items():
            self._figures[key] = self._figures.get(key, 0.0) + value

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step: LoRAModule's loss, LR and grad norm, then rewards (mean, std, each term),
        KL, clip fraction, completion length, group accuracy and a sample group.

        ``grpo/flat_groups`` is the share of sampled groups (refills included) whose G rewards were all equal:
        they carry no gradient and are dropped from the step; ``grpo/refills`` the refill rounds the step needed.
        KL, clip fraction and ratio are means over the micro-batches that kept a group.
        """
        super().on_before_optimizer_step(optimizer)
        w, self._figures = self._figures, {}
        if not w:
            return
        n, micro = max(w["n"], 1.0), max(w.get("used_micro", 0.0), 1.0)
        mean = w["reward"] / n
        figures = {
            "grpo/reward": mean,
            "grpo/reward_std": max(w["reward_sq"] / n - mean**2, 0.0) ** 0.5,
            **{f"grpo/reward_{k}": w[f"reward_{k}"] / n for k in REWARD_TERMS},
            "grpo/group_accuracy": w["reward_correct"] / n,
            "grpo/kl": w.get("kl", 0.0) / micro,
            "grpo/clip_fraction": w.get("clip_fraction", 0.0) / micro,
            "grpo/ratio": w.get("ratio", 1.0) / micro,
            "grpo/completion_tokens": w["completion_tokens"] / n,
            "grpo/flat_groups": w["flat_groups"] / max(w["groups"], 1.0),
            "grpo/refills": w["refills"],
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
