"""NLICoTModule: a 4-bit NF4 Mistral with a LoRA adapter, trained on packed answer-only tokens.

What it guarantees, and where:
* loss = mean over every supervised token of an optimizer step, across micro-batches and ranks (each
  micro-batch's summed CE in :meth:`training_step`, the gradient scaled by the step's token count in
  :meth:`optimizer_step`);
* packed examples never see each other (nlicot/attention.py: refused at start if the attention path cannot
  isolate them, checked on every step that what that path needs reaches the decoder);
* checkpoints hold the adapter and the training state — never the frozen base (:meth:`on_save_checkpoint`).

What it leaves to callbacks (nlicot/callbacks.py, added by the CLI): generation-based evaluation, the data
report, throughput / packing logging and the RNG streams of exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from torchmetrics import MeanMetric

from nlicot import evaluation
from nlicot.attention import (
    IsolationProbe,
    PackingIsolationError,  # noqa: F401 (re-exported: nlicot.cli catches it from here)
    attention_inputs,
    choose_implementation,
)
from nlicot.generation import generate_batched, sample_chains
from nlicot.hub import load_tokenizer, resolve_model_path
from nlicot.packing import IGNORE_INDEX
from nlicot.precision import keep_compute_dtype
from nlicot.schedule import WarmupCosine

#: Nucleus mass: 0 < top_p <= 1 (checked by the CLI parser, like the other positive generation settings).
TopP = restricted_number_type("TopP", float, [(">", 0), ("<=", 1)])


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops; the last checkpoint written before it stays usable."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's adapter does not fit this model (other LoRA settings or another base)."""


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 where the GPU supports it, else fp32 (bf16 matmuls on a CPU are slow, not just imprecise)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


class NLICoTModule(L.LightningModule):
    """QLoRA fine-tuning of a causal LM to write a 3-step thought and a JSON NLI label."""

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        quantization: Literal["nf4", "none"] = "nf4",
        double_quant: bool = True,
        compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto",
        attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "auto",
        gradient_checkpointing: bool = True,
        lora_r: int = 32,
        lora_alpha: int = 64,
        lora_dropout: float = 0.05,
        target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"],  # noqa: B006 (jsonargparse default)
        optimizer: Literal["auto", "adamw", "paged_adamw_8bit"] = "auto",
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 150,
        min_lr_ratio: float = 0.0,
        rewarm_on_extend: bool = False,
        adapter_path: str | None = None,
        max_new_tokens: int = 320,
        generation_batch_size: int = 32,
        num_samples: PositiveInt = 1,
        temperature: PositiveFloat = 0.7,
        top_p: TopP = 0.95,
        sample_seed: int = 0,
        greedy_reference: bool = True,
        packing: bool = True,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (e.g. mistralai/Mistral-7B-v0.3), local folder, or ``tiny`` (offline).
            quantization: ``nf4`` = bitsandbytes 4-bit NF4 base (QLoRA); ``none`` = base in compute dtype.
            double_quant: also quantize the quantization constants (saves ~0.4 bit/param).
            compute_dtype: dtype of the 4-bit matmuls and activations; ``auto`` = bf16 on GPU, fp32 on CPU.
            attn_implementation: ``auto`` = sdpa (isolates packed rows everywhere; flash-attention by name, see
                nlicot/attention.py).
            gradient_checkpointing: recompute activations in backward (less memory, ~30 % more compute).
            lora_r: LoRA rank.
            lora_alpha: LoRA scaling numerator (scale = alpha / r).
            lora_dropout: dropout on the LoRA input.
            target_modules: linear layers that get an adapter.
            optimizer: ``auto`` = paged 8-bit AdamW where CUDA exists, else AdamW.
            learning_rate: peak LR reached after warmup.
            weight_decay: AdamW decoupled weight decay on the adapter.
            betas: AdamW betas.
            warmup_steps: optimizer steps of linear warmup from 0 to the peak (a count, never a ratio).
            min_lr_ratio: cosine floor as a fraction of the peak, reached at the last step.
            rewarm_on_extend: when a resumed run has a longer horizon, warm up again instead of continuing.
            adapter_path: start from a saved PEFT adapter folder (e.g. ``…/checkpoints/adapter``) instead of a
                fresh LoRA; its own LoRA settings apply.
            max_new_tokens: generation budget per answer (a 3-step thought + JSON fits in ~200).
            generation_batch_size: sequences decoded together in predict / generation evaluation (with
                ``num_samples`` k > 1, one prompt takes k sequences, +1 with ``greedy_reference``).
            num_samples: chains per example. 1 = one greedy chain (``temperature`` / ``top_p`` unused); k > 1 =
                self-consistency: k sampled chains, majority vote, agreement (share of chains voting for the
                winner) as the confidence (ties and parse failures: nlicot/voting.py).
            temperature: sampling temperature when ``num_samples`` > 1.
            top_p: nucleus sampling mass when ``num_samples`` > 1 (1 = off).
            sample_seed: seed of the sampled chains; chain j of a row draws from a hash of (seed, row id, j), so
                results do not depend on batch size, order or the number of devices.
            greedy_reference: with ``num_samples`` > 1, also decode one greedy chain per row in the same batch
                (shared prefill) and report its accuracy as ``greedy_accuracy``; it does not vote.
            packing: set by the CLI from ``data.packing``; makes the module refuse non-isolating attention.
        """
        super().__init__()
        # The CLI hands these over as jsonargparse's checked int/float subclasses; checkpoints must hold plain
        # numbers (``torch.load(weights_only=True)`` refuses other classes). save_hyperparameters reads the locals.
        num_samples, temperature, top_p = int(num_samples), float(temperature), float(top_p)
        self.save_hyperparameters()
        self.model = None
        self.tokenizer = None
        self.strict_loading = False  # checkpoints hold the adapter only; completeness is checked by hand
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self._window: torch.Tensor | None = None  # [summed CE, supervised tokens] of this rank's micro-batches
        self._step_loss: torch.Tensor | None = None
        self._probe = IsolationProbe()

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load the base on this rank's device (QLoRA + DDP: each rank holds its own 4-bit copy), add LoRA."""
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        h = self.hparams
        impl = choose_implementation(h.attn_implementation, h.packing)
        dtype = resolve_dtype(h.compute_dtype)
        quant = None
        if h.quantization == "nf4":
            quant = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=h.double_quant,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_storage=dtype if dtype != torch.float32 else torch.uint8,
            )
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        path = resolve_model_path(h.model_name_or_path)
        base = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=dtype, attn_implementation=impl, device_map={"": device}
        )
        base.config.use_cache = False
        for module in base.modules():
            # bitsandbytes silently repacks 4-bit weights into a bf16-only CPU kernel format the first time a
            # layer runs in eval mode without grad. Numbers then differ (~3e-3 in loss) between a run that
            # validated and one that did not, which breaks exact resume; keep one fp32 path on the CPU.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        gc_kwargs = {"use_reentrant": False}
        if quant is not None:
            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=h.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
            )
            keep_compute_dtype(base, dtype)  # undo its fp32 upcast of embeddings, norms, lm_head (nlicot/precision.py)
        elif h.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            base.enable_input_require_grads()
        if h.adapter_path:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(base, h.adapter_path, is_trainable=True)
        else:
            lora = LoraConfig(
                r=h.lora_r, lora_alpha=h.lora_alpha, lora_dropout=h.lora_dropout,
                target_modules=list(h.target_modules), bias="none", task_type="CAUSAL_LM",
            )
            self.model = get_peft_model(base, lora)
        self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        self.tokenizer = load_tokenizer(h.model_name_or_path)
        self._probe.attach(self.model.get_base_model().get_decoder())

    # ------------------------------------------------------------------ loss
    def _attention_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | int]:
        """Per-example isolation for the attention path in use (nlicot/attention.py)."""
        impl = self.model.get_base_model().config._attn_implementation
        return attention_inputs(batch, impl, resolve_dtype(self.hparams.compute_dtype))

    def token_losses(
        self, batch: dict[str, torch.Tensor], with_accuracy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Summed cross-entropy, correct argmax count (``with_accuracy``) and count over the supervised tokens.

        The LM head runs on supervised positions only: prompts and padding (a third of a packed row)
        never get 32,768-way logits.
        """
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=batch["input_ids"], **self._attention_inputs(batch)).last_hidden_state
        if self.hparams.packing:
            self._check_isolation()
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
        chosen = targets[keep]
        ce = F.cross_entropy(logits, chosen, reduction="sum")
        correct = (logits.detach().argmax(-1) == chosen).sum() if with_accuracy else None
        return ce, correct, keep.sum()

    def _check_isolation(self) -> None:
        self._probe.check(self.model.get_base_model().config._attn_implementation)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, _, n = self.token_losses(batch)
        if not torch.isfinite(ce):
            raise NonFiniteLossError(
                f"loss is {ce.item()} at optimizer step {self.global_step} (batch {batch_idx}); training stopped. "
                "The last checkpoint was written before this and is usable: lower model.learning_rate or check data."
            )
        counts = torch.stack([ce.detach(), n.to(ce.dtype)])
        self._window = counts if self._window is None else self._window + counts
        return ce  # summed, not averaged: optimizer_step divides by the whole step's token count

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Step on d(mean CE per supervised token of the whole step) whatever the micro-batches and ranks.

        After the step's last backward, ``p.grad = Σ CE / (accumulate × world_size)``: every micro-batch returned
        its summed CE, Lightning divided each by ``accumulate_grad_batches`` (also in a shorter last window of an
        epoch) and DDP averaged over ranks. Multiplying by ``accumulate × world_size / T``, with T the step's
        supervised tokens on all ranks (one all-reduce), gives the token mean, as torchtune scales by
        1 / num_tokens. It runs inside the closure, so ``on_before_optimizer_step`` hooks, the logged gradient
        norm and gradient clipping all see the normalised gradient.
        """

        def closure() -> Any:
            loss = optimizer_closure()
            self._normalise_gradients()
            return loss

        optimizer.step(closure=closure)

    def _normalise_gradients(self) -> None:
        ce, tokens = self.trainer.strategy.reduce(self._window, reduce_op="sum")
        self._window = None
        tokens = tokens.clamp(min=1)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        self._step_loss = ce / tokens

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step, gradients normalised and not yet clipped: the step's loss, LR and grad norm."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.log("train/loss", self._step_loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict(
            {
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/grad_norm": torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0),
            },
            on_step=True, on_epoch=False,
        )

    # ------------------------------------------------------------------ eval
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        ce, correct, n = self.token_losses(batch, with_accuracy=True)
        n = n.clamp(min=1)
        self.val_loss.update(ce / n, weight=n)
        self.val_acc.update(correct / n, weight=n)
        self.log(f"{stage}/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/token_accuracy", self.val_acc, on_step=False, on_epoch=True)

    def predict_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows (``prompt_ids``, ``id``, ``label``, …) → prediction records, with the model's generation settings.

        One greedy chain per row, or with ``num_samples`` > 1 a vote over sampled chains
        (see ``nlicot/evaluation.py`` for the record fields). Used by :meth:`predict_step`, by the
        generation-evaluation callback and by GRPO.
        """
        h = self.hparams
        prompts = [r["prompt_ids"] for r in rows]
        if h.num_samples == 1:
            generated = generate_batched(self.model, self.tokenizer, prompts, max_new_tokens=h.max_new_tokens,
                                         batch_size=h.generation_batch_size)  # fmt: skip
        else:
            generated = sample_chains(
                self.model, self.tokenizer, prompts, [str(r["id"]) for r in rows], num_samples=h.num_samples,
                temperature=h.temperature, top_p=h.top_p, seed=h.sample_seed, greedy=h.greedy_reference,
                max_new_tokens=h.max_new_tokens, batch_size=h.generation_batch_size,
            )  # fmt: skip
        return evaluation.records(self.tokenizer, rows, generated)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """One length-sorted batch of rows → records (the PredictionWriter restores input order)."""
        recs = self.predict_records(batch)
        for rec, row in zip(recs, batch, strict=True):
            rec["index"] = row["index"]
        return recs

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        kind = h.optimizer
        if kind == "auto":
            kind = "paged_adamw_8bit" if torch.cuda.is_available() else "adamw"
        if kind == "paged_adamw_8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.PagedAdamW8bit(params, lr=h.learning_rate, betas=h.betas, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=h.learning_rate, betas=h.betas, weight_decay=h.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = WarmupCosine(opt, h.warmup_steps, total, h.min_lr_ratio, rewarm=h.rewarm_on_extend)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoints
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the LoRA weights (the 4-bit base is reloaded from its source)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.adapter_state_dict()
        checkpoint["nlicot"] = {"base_model": self.hparams.model_name_or_path}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:
            self.configure_model()
        own, saved = self.adapter_state_dict(), checkpoint["state_dict"]
        missing = sorted(set(own) - set(saved))
        reshaped = sorted(k for k in own.keys() & saved.keys() if own[k].shape != saved[k].shape)
        if missing or reshaped:
            example = (f"lacks {len(missing)} adapter tensors (e.g. {missing[0]})" if missing else
                       f"holds {reshaped[0]} as {tuple(saved[reshaped[0]].shape)}, this model needs "
                       f"{tuple(own[reshaped[0]].shape)}")
            raise CheckpointMismatchError(
                f"checkpoint {example}: it was made with other LoRA settings (lora_r, target_modules) or another "
                "base model"
            )

