"""Which attention path keeps packed examples apart, the inputs it needs, and a probe that proves they arrived.

A packed row holds several examples (nlicot/packing.py); each must attend only to itself. sdpa and eager get a
4-D block-causal mask, flash attention restarts a sequence where ``position_ids`` fall back to 0 (varlen). A
path that can do neither is refused before the model loads, and every packed step checks that the mask and
positions really reached the decoder (a wrapper dropping them would leak silently).
"""

from __future__ import annotations

from typing import Any

import torch

from nlicot.packing import block_causal_mask

#: Attention implementations that can keep packed examples apart, and how.
ISOLATING: dict[str, str] = {"sdpa": "bool 4-D mask", "eager": "additive 4-D mask",
                             "flash_attention_2": "position_ids (varlen)", "flash_attention_3": "position_ids (varlen)"}


class PackingIsolationError(RuntimeError):
    """Packing is on but the model would let packed examples attend to each other."""


def choose_implementation(requested: str, packing: bool) -> str:
    """``auto`` = flash_attention_2 if installed and on GPU, else sdpa; refuse a non-isolating path when packing."""
    impl = requested
    if impl == "auto":
        try:
            import flash_attn  # noqa: F401

            impl = "flash_attention_2" if torch.cuda.is_available() else "sdpa"
        except ImportError:
            impl = "sdpa"
    if packing and impl not in ISOLATING:
        raise PackingIsolationError(
            f"model.attn_implementation={impl!r} cannot keep packed examples apart; use one of "
            f"{', '.join(ISOLATING)} or set data.packing=false"
        )
    return impl


def attention_inputs(batch: dict[str, torch.Tensor], impl: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-example isolation for the attention path ``impl`` (see nlicot/packing.py); ``dtype`` of an additive mask."""
    if impl.startswith("flash_attention"):
        return {"position_ids": batch["position_ids"]}  # varlen: positions restart = new sequence
    mask_dtype = None if impl == "sdpa" else dtype
    return {"position_ids": batch["position_ids"], "attention_mask": block_causal_mask(batch["segment_ids"], mask_dtype)}


class IsolationProbe:
    """Records what the decoder's last forward received, to check that the isolation inputs reached it."""

    def __init__(self) -> None:
        self.saw: dict[str, Any] = {}

    def attach(self, decoder: torch.nn.Module) -> None:
        decoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        self.saw = {"mask_dim": None if mask is None else mask.dim(), "positions": pos is not None}

    def check(self, impl: str) -> None:
        """Raise :class:`PackingIsolationError` unless positions (and, off flash attention, a 4-D mask) arrived."""
        saw = self.saw
        if not saw.get("positions") or (not impl.startswith("flash_attention") and saw.get("mask_dim") != 4):
            raise PackingIsolationError(f"packing is on but the decoder received {saw}: examples would leak")
