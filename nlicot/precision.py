"""Keep a 4-bit model's frozen float layers in the compute dtype, so its activations stay there too.

peft's ``prepare_model_for_kbit_training`` casts every float parameter that is not 4-bit (embeddings, lm_head,
the RMSNorm weights) to fp32. Nothing of that is trained here (LoRA trains its own fp32 adapter), but the dtype
spreads: bitsandbytes' ``Linear4bit`` returns its output in its *input's* dtype, and transformers' RMSNorm returns
``weight * x.to(input_dtype)``, so an fp32 norm weight turns every normalised activation fp32. The residual stream,
the attention inputs and every gradient-checkpointing save then run at 4 bytes a value instead of 2 (measured on
the CPU at bf16: the last hidden state is fp32 after the cast and bf16 after :func:`keep_compute_dtype`).

The norms go back too, although they "may stay fp32": with fp32 norm weights the residual stream would still be
fp32 (the product promotes). RMSNorm computes its variance in fp32 whatever its weight's dtype, which is the part
that needs the precision; the bf16 weight is the checkpoint's own value (it was stored in bf16).
"""

from __future__ import annotations

import torch


def keep_compute_dtype(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Cast the frozen float parameters of ``model`` outside its 4-bit layers to ``dtype``; return their names.

    A no-op in fp32 (the CPU default). Trainable parameters (a LoRA adapter attached later, or already) keep
    their dtype: the optimizer steps them in fp32.
    """
    if dtype == torch.float32:
        return []
    cast = []
    for name, param in model.named_parameters():
        if param.requires_grad or type(param).__name__ == "Params4bit" or not param.is_floating_point():
            continue
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast.append(name)
    return cast
