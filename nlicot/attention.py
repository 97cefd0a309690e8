"""Which attention implementation a run uses, and the inputs that keep packed examples apart on it.

Each path isolates the examples of a packed row in its own way (what :data:`ISOLATING` lists):

* ``sdpa``: a bool B×1×L×L block-causal mask; ``eager``: the same mask in additive float form (eager reads a bool
  4-D mask wrongly);
* flash-attention: explicit varlen boundaries. The collator's ``cu_seq_lens`` (int32, cumulative segment lengths
  over the *flattened* B·L tokens, padding a segment of its own) and ``max_length`` go to the decoder as
  ``cu_seq_lens_q/k`` and ``max_length_q/k``; LlamaModel/MistralModel pass their ``**kwargs`` unchanged to every
  attention call, and transformers' ``_flash_attention_forward`` then flattens the batch and calls
  ``flash_attn_varlen_func`` with them. Restarting ``position_ids`` alone are **not** enough: transformers 5.24
  infers varlen boundaries from them only when the batch has one row (``_is_packed_sequence``: ``batch_size != 1``
  → not packed), so at micro-batch 16 every row would be plain causal and examples would see their neighbours.

:class:`IsolationProbe` watches what actually reaches the decoder on every packed step and refuses a step whose
inputs do not isolate on the path in use (TRL once lost its sequence lengths in a column filter, silently).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers.utils.generic import is_flash_attention_requested

from nlicot.packing import Example, block_causal_mask, collate_packs

#: Attention implementations that can keep packed examples apart, and what each needs to do so.
ISOLATING = {
    "sdpa": "bool 4-D block-causal mask",
    "eager": "additive 4-D block-causal mask",
    "flash_attention_2": "varlen cu_seq_lens_q/k + max_length_q/k",
    "flash_attention_3": "varlen cu_seq_lens_q/k + max_length_q/k",
}
#: What ``auto`` picks. Flash-attention's isolation is tested on the CPU through transformers' flash code path with
#: a reference kernel (tests/test_isolation.py) but not yet on a GPU; until benchmarks/gpu_smoke.py has shown
#: packed == alone with the real kernel, ``auto`` stays on sdpa, which isolates everywhere. Ask for
#: ``flash_attention_2`` by name to use it.
AUTO = "sdpa"
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class PackingIsolationError(RuntimeError):
    """Packing is on but the model would let packed examples attend to each other."""


def choose_implementation(requested: str, packing: bool) -> str:
    """``auto`` → :data:`AUTO`; with packing, refuse any path that cannot isolate packed examples."""
    impl = AUTO if requested == "auto" else requested
    if packing and impl not in ISOLATING:
        raise PackingIsolationError(
            f"model.attn_implementation={impl!r} cannot keep packed examples apart; use one of "
            f"{', '.join(ISOLATING)} or set data.packing=false"
        )
    return impl


def attention_inputs(batch: dict[str, torch.Tensor], impl: str, dtype: torch.dtype) -> dict[str, torch.Tensor | int]:
    """The decoder's keyword inputs that isolate each segment of ``batch`` (nlicot.packing.collate_packs) on
    ``impl``; ``dtype`` is the compute dtype (the additive mask's). Flash gets no ``attention_mask``: a 2-D one would
    send transformers down its unpadding path, which ignores ``cu_seq_lens``."""
    inputs: dict[str, torch.Tensor | int] = {"position_ids": batch["position_ids"]}
    if is_flash_attention_requested(requested_attention_implementation=impl):
        inputs["cu_seq_lens_q"] = inputs["cu_seq_lens_k"] = batch["cu_seq_lens"]
        inputs["max_length_q"] = inputs["max_length_k"] = int(batch["max_length"])
    else:
        inputs["attention_mask"] = block_causal_mask(batch["segment_ids"], None if impl == "sdpa" else dtype)
    return inputs


class IsolationProbe:
    """Records what the decoder received on its last forward; :meth:`check` says whether that isolates."""

    def __init__(self) -> None:
        self.saw: dict[str, Any] = {}

    def attach(self, decoder: torch.nn.Module) -> None:
        decoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        cu = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
        self.saw = {
            "mask_dim": None if mask is None else mask.dim(),
            "positions": kwargs.get("position_ids") is not None,
            "varlen": all(kwargs.get(k) is not None for k in VARLEN_KEYS)
            and all(c.dtype == torch.int32 for c in cu),  # flash-attn's kernels take int32 boundaries only
        }

    def check(self, impl: str) -> None:
        """Raise :class:`PackingIsolationError` unless the last forward got what ``impl`` needs to isolate."""
        saw = self.saw
        if is_flash_attention_requested(requested_attention_implementation=impl):
            ok = saw.get("positions") and saw.get("varlen") and saw.get("mask_dim") is None
        else:
            ok = saw.get("positions") and saw.get("mask_dim") == 4
        if not ok:
            raise PackingIsolationError(
                f"packing is on but the decoder ({impl}, needs {ISOLATING.get(impl, 'an isolating input')}) "
                f"received {saw}: examples would leak"
            )


def without_isolation(inputs: dict[str, Any]) -> dict[str, Any]:
    """The same decoder inputs minus what isolates (a leak control): flash loses its varlen boundaries (positions
    only, which transformers ignores at batch > 1), sdpa/eager get a plain causal mask."""
    if "cu_seq_lens_q" in inputs:
        return {k: v for k, v in inputs.items() if k not in VARLEN_KEYS}
    mask = inputs["attention_mask"]
    segments = torch.zeros(mask.shape[0], mask.shape[-1], dtype=torch.long, device=mask.device)
    return inputs | {"attention_mask": block_causal_mask(segments, mask.dtype if mask.is_floating_point() else None)}


def isolation_gap(per_token_loss: Callable[[dict, bool], torch.Tensor], packs: Sequence[Sequence[Example]],
                  pad_id: int) -> tuple[float, float]:  # fmt: skip
    """How far each example's per-token loss in the packed batch is from its loss alone: (isolated, leak control).

    ``per_token_loss(batch, isolate)`` gives the B×(L-1) cross-entropy of a collated batch with the isolating
    inputs, or with :func:`without_isolation` of them. Largest absolute difference over supervised tokens; the
    second figure shows the comparison can see a leak (it must be large where the first is ~0).
    """
    batch = collate_packs(packs, pad_id)
    packed, leaked = per_token_loss(batch, True), per_token_loss(batch, False)
    worst = leak = 0.0
    for r, pack in enumerate(packs):
        start = 0
        for ex in pack:
            alone = per_token_loss(collate_packs([[ex]], pad_id), True)[0][: len(ex) - 1]
            supervised = alone != 0
            span = slice(start, start + len(ex) - 1)
            worst = max(worst, (packed[r, span] - alone)[supervised].abs().max().item())
            leak = max(leak, (leaked[r, span] - alone)[supervised].abs().max().item())
            start += len(ex)
    return worst, leak
