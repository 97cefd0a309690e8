"""NLICoTModule: supervised fine-tuning of the LoRA adapter on packed answer-only tokens (the SFT recipe).

Everything but the training step is :class:`nlicot.lora.LoRAModule`'s: the loss is the mean over every supervised
token of an optimizer step, across micro-batches and ranks (:meth:`~nlicot.lora.LoRAModule.add_to_step`); packed
examples never see each other (nlicot/attention.py); checkpoints hold the adapter and the training state, never
the frozen base.
"""

from __future__ import annotations

import torch

from nlicot.lora import LoRAModule


class NLICoTModule(LoRAModule):
    """QLoRA fine-tuning of a causal LM to write a 3-step thought and a JSON NLI label."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, _, n = self.token_losses(batch)
        return self.add_to_step(ce, n, batch_idx)
