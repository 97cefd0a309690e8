"""LoRAModule: what every training recipe shares — a 4-bit NF4 base with a LoRA adapter, trained by token-weighted
steps, evaluated teacher-forced and by generation, checkpointed as the adapter only.

The recipes (nlicot/sft.py, nlicot/grpo.py) subclass it and write ``training_step``; they reach it through this
public API only:

* :func:`load_base` loads the frozen base (quantization, attention path, gradient checkpointing);
  :meth:`LoRAModule.load_adapter` puts a fresh LoRA, a PEFT folder or an nlicot ``.ckpt`` on it;
* :meth:`LoRAModule.add_to_step` takes a micro-batch's *summed* objective and its token count; the step's gradient
  becomes the mean over every token of the optimizer step, across micro-batches and ranks
  (:meth:`LoRAModule.optimizer_step`);
* :meth:`LoRAModule.check_fits` is the one "does this checkpoint's adapter fit this model" check, and
  :func:`architecture` the settings a checkpoint fixes;
* :meth:`LoRAModule.token_losses` (packed, example-isolated teacher forcing) and :meth:`LoRAModule.predict_records`
  (generation with the ``generation`` settings).

What it leaves to callbacks (nlicot/callbacks.py, added by the CLI): generation-based evaluation, the data
report, throughput / packing logging and the RNG streams of exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from nlicot import predictions
from nlicot.args import GenerationConfig, LoRAConfig, OptimConfig, ScheduleConfig, as_config, plain
from nlicot.attention import IsolationProbe, attention_inputs, choose_implementation
from nlicot.generation import generate_batched, sample_chains
from nlicot.hub import load_tokenizer, resolve_model_path
from nlicot.packing import IGNORE_INDEX
from nlicot.precision import keep_compute_dtype
from nlicot.schedule import WarmupCosine

#: Model settings a checkpoint fixes (dotted keys of ``model.init_args``): its adapter fits only this base and shape.
ARCHITECTURE = ("model_name_or_path", "quantization", "double_quant", "lora.r", "lora.alpha", "lora.target_modules")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops; the last checkpoint written before it stays usable."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's adapter does not fit this model (other LoRA settings or another base)."""


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 where the GPU supports it, else fp32 (bf16 matmuls on a CPU are slow, not just imprecise)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    """The :data:`ARCHITECTURE` values a checkpoint's ``hyper_parameters`` record (dotted keys; absent ones left out)."""
    found = {}
    for key in ARCHITECTURE:
        value: Any = hparams
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            found[key] = value
    return found


def load_base(model_name_or_path: str, quantization: str, double_quant: bool, compute_dtype: str,
              attn_implementation: str, gradient_checkpointing: bool, packing: bool, device: torch.device):
    """The frozen base on ``device`` (QLoRA + DDP: each rank holds its own 4-bit copy), ready for an adapter."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    impl = choose_implementation(attn_implementation, packing)
    dtype = resolve_dtype(compute_dtype)
    quant = None
    if quantization == "nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype if dtype != torch.float32 else torch.uint8,
        )
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_name_or_path), quantization_config=quant, dtype=dtype, attn_implementation=impl,
        device_map={"": device},
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
            base, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
        keep_compute_dtype(base, dtype)  # undo its fp32 upcast of embeddings, norms, lm_head (nlicot/precision.py)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        base.enable_input_require_grads()
    return base


class LoRAModule(L.LightningModule):
    """A frozen causal LM with a trainable LoRA adapter; subclasses say what a training step optimises."""

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        quantization: Literal["nf4", "none"] = "nf4",
        double_quant: bool = True,
        compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto",
        attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "auto",
        gradient_checkpointing: bool = True,
        adapter_path: str | None = None,
        lora: LoRAConfig = LoRAConfig(),  # noqa: B008 (a dataclass default, as jsonargparse documents)
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        generation: GenerationConfig = GenerationConfig(),  # noqa: B008
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
            adapter_path: start from a saved PEFT adapter folder (e.g. ``…/checkpoints/adapter``) or an nlicot
                ``.ckpt`` instead of a fresh LoRA; its own LoRA settings apply.
            lora: the adapter's shape.
            optim: optimizer and peak learning rate.
            schedule: warmup and cosine floor of the learning rate.
            generation: how answers are generated (predict, generation evaluation, GRPO's samples).
            packing: set by the CLI from ``data.packing``; makes the module refuse non-isolating attention.
        """
        super().__init__()
        self.lora, self.optim = as_config(LoRAConfig, lora), as_config(OptimConfig, optim)
        self.schedule = as_config(ScheduleConfig, schedule)
        self.generation = as_config(GenerationConfig, generation)
        self.save_hyperparameters(ignore=["lora", "optim", "schedule", "generation"])
        self.save_hyperparameters({"lora": plain(self.lora), "optim": plain(self.optim),
                                   "schedule": plain(self.schedule), "generation": plain(self.generation)})
        self.model = None
        self.tokenizer = None
        self.strict_loading = False  # checkpoints hold the adapter only; completeness is checked by check_fits
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.probe = IsolationProbe()
        self._window: torch.Tensor | None = None  # [summed objective, tokens] of this rank's micro-batches
        self._step_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load the base on this rank's device, put the adapter on it (:meth:`load_adapter`)."""
        if self.model is not None:
            return
        h = self.hparams
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        base = load_base(h.model_name_or_path, h.quantization, h.double_quant, h.compute_dtype,
                         h.attn_implementation, h.gradient_checkpointing, h.packing, device)
        self.load_adapter(base, h.adapter_path)
        self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        self.tokenizer = load_tokenizer(h.model_name_or_path)
        self.probe.attach(self.model.get_base_model().get_decoder())

    def load_adapter(self, base: torch.nn.Module, path: str | None) -> None:
        """``self.model`` = ``base`` with a fresh LoRA (``path`` None), a PEFT adapter folder, or an nlicot ``.ckpt``.

        A folder or checkpoint brings its own LoRA settings; a checkpoint's replace ``self.lora`` (and the saved
        hyperparameters) and its weights must fit (:meth:`check_fits`).
        """
        from peft import LoraConfig, PeftModel, get_peft_model

        if path and not Path(path).is_file():
            self.model = PeftModel.from_pretrained(base, path, is_trainable=True)
            return
        ckpt = torch.load(path, map_location="cpu", weights_only=True) if path else None
        if ckpt is not None and "lora" in ckpt.get("hyper_parameters", {}):
            self.lora = as_config(LoRAConfig, ckpt["hyper_parameters"]["lora"])
            self.hparams["lora"] = plain(self.lora)
        lora = self.lora
        self.model = get_peft_model(base, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            bias="none", task_type="CAUSAL_LM",
        ))
        if ckpt is not None:
            self.check_fits(ckpt, f"model.adapter_path={path}")
            self.load_state_dict(ckpt["state_dict"], strict=False)

    def check_fits(self, checkpoint: dict[str, Any], start: str | None = None) -> None:
        """Raise :class:`CheckpointMismatchError` unless ``checkpoint`` holds every adapter tensor of this model,
        shaped alike.

        ``start`` names a starting adapter (``model.adapter_path=…``): it must also come from this base by name. A
        checkpoint being resumed or exported may name another copy of the base (``export --model_name_or_path``).
        """
        saved_base = checkpoint.get("hyper_parameters", {}).get("model_name_or_path")
        if start is not None and saved_base not in (None, self.hparams.model_name_or_path):
            raise CheckpointMismatchError(f"{start} was trained on {saved_base!r}, not "
                                          f"model.model_name_or_path={self.hparams.model_name_or_path!r}")
        own, saved = self.adapter_state_dict(), checkpoint["state_dict"]
        missing = sorted(set(own) - set(saved))
        reshaped = sorted(k for k in own.keys() & saved.keys() if own[k].shape != saved[k].shape)
        if missing or reshaped:
            example = (f"lacks {len(missing)} adapter tensors (e.g. {missing[0]})" if missing else
                       f"holds {reshaped[0]} as {tuple(saved[reshaped[0]].shape)}, this model needs "
                       f"{tuple(own[reshaped[0]].shape)}")
            raise CheckpointMismatchError(
                f"{start or 'checkpoint'} {example}: it was made with other LoRA settings (model.lora.r, model.lora.target_modules) "
                "or another base model"
            )

    # ------------------------------------------------------------------ loss
    def attention_impl(self) -> str:
        """The attention path the loaded base runs (``auto`` resolved)."""
        return self.model.get_base_model().config._attn_implementation

    def decoder_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | int]:
        """What keeps a packed batch's examples apart on the attention path in use (:func:`attention_inputs`)."""
        return attention_inputs(batch, self.attention_impl(), resolve_dtype(self.hparams.compute_dtype))

    def check_isolation(self) -> None:
        """Raise :class:`PackingIsolationError` unless the decoder's last call received what this path needs."""
        self.probe.check(self.attention_impl())

    def token_losses(
        self, batch: dict[str, torch.Tensor], with_accuracy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Summed cross-entropy, correct argmax count (``with_accuracy``) and count over the supervised tokens.

        The LM head runs on supervised positions only: prompts and padding (a third of a packed row)
        never get 32,768-way logits.
        """
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=batch["input_ids"], **self.decoder_inputs(batch)).last_hidden_state
        if self.hparams.packing:
            self.check_isolation()
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
        chosen = targets[keep]
        ce = F.cross_entropy(logits, chosen, reduction="sum")
        correct = (logits.detach().argmax(-1) == chosen).sum() if with_accuracy else None
        return ce, correct, keep.sum()

    def add_to_step(self, summed_loss: torch.Tensor, n_tokens: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Count a micro-batch's summed objective over ``n_tokens`` into the optimizer step; return it for backward.

        Stops training on a NaN / inf loss (:class:`NonFiniteLossError`).
        """
        if not torch.isfinite(summed_loss):
            raise NonFiniteLossError(
                f"loss is {summed_loss.item()} at optimizer step {self.global_step} (batch {batch_idx}); training "
                "stopped. The last checkpoint was written before this and is usable: lower "
                "model.optim.learning_rate or check data."
            )
        counts = torch.stack([summed_loss.detach(), n_tokens.to(summed_loss.dtype)])
        self._window = counts if self._window is None else self._window + counts
        return summed_loss  # summed, not averaged: optimizer_step divides by the whole step's token count

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Step on d(mean objective per token of the whole step) whatever the micro-batches and ranks.

        After the step's last backward, ``p.grad = Σ loss / (accumulate × world_size)``: every micro-batch returned
        its summed loss (:meth:`add_to_step`), Lightning divided each by ``accumulate_grad_batches`` (also in a
        shorter last window of an epoch) and DDP averaged over ranks. Multiplying by ``accumulate × world_size / T``,
        with T the step's tokens on all ranks (one all-reduce), gives the token mean, as torchtune scales by
        1 / num_tokens. It runs inside the closure, so ``on_before_optimizer_step`` hooks, the logged gradient
        norm and gradient clipping all see the normalised gradient.
        """

        def closure() -> Any:
            loss = optimizer_closure()
            self._normalise_gradients()
            return loss

        optimizer.step(closure=closure)

    def _normalise_gradients(self) -> None:
        total, tokens = self.trainer.strategy.reduce(self._window, reduce_op="sum")
        self._window = None
        tokens = tokens.clamp(min=1)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        self._step_loss = total / tokens

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

    def throughput_counts(self, batch: Any) -> tuple[int, int]:
        """(real tokens, padded slots) a training batch feeds the model, for ``ThroughputLog``: packed rows'."""
        return int(batch["num_real_tokens"]), batch["input_ids"].numel()

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
        """Rows (``prompt_ids``, ``id``, ``label``, …) → prediction records, with the ``generation`` settings.

        One greedy chain per row, or with ``num_samples`` > 1 a vote over sampled chains
        (see ``nlicot/predictions.py`` for the record fields). Used by :meth:`predict_step` and by the
        generation-evaluation callback.
        """
        g = self.generation
        prompts = [r["prompt_ids"] for r in rows]
        if g.num_samples == 1:
            generated = generate_batched(self.model, self.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                                         batch_size=g.batch_size)  # fmt: skip
        else:
            generated = sample_chains(
                self.model, self.tokenizer, prompts, [str(r["id"]) for r in rows], num_samples=g.num_samples,
                temperature=g.temperature, top_p=g.top_p, seed=g.seed, greedy=g.greedy_reference,
                max_new_tokens=g.max_new_tokens, batch_size=g.batch_size,
            )  # fmt: skip
        return predictions.records(self.tokenizer, rows, generated)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """One length-sorted batch of rows → records (the PredictionWriter restores input order)."""
        recs = self.predict_records(batch)
        for rec, row in zip(recs, batch, strict=True):
            rec["index"] = row["index"]
        return recs

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        o, s = self.optim, self.schedule
        params = [p for p in self.parameters() if p.requires_grad]
        kind = o.name
        if kind == "auto":
            kind = "paged_adamw_8bit" if torch.cuda.is_available() else "adamw"
        betas = tuple(o.betas)
        if kind == "paged_adamw_8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.PagedAdamW8bit(params, lr=o.learning_rate, betas=betas, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=o.learning_rate, betas=betas, weight_decay=o.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = WarmupCosine(opt, s.warmup_steps, total, s.min_lr_ratio, rewarm=s.rewarm_on_extend)
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
        self.check_fits(checkpoint)
