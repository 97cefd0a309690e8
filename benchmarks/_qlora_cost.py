"""What one QLoRA training step costs by formula: FLOPs (for MFU and HFU) and GPU memory (for configs/best.yaml).

The setting is nlicot's: a frozen NF4 base, LoRA on some of its linear layers, gradient checkpointing of every
decoder layer, bf16 compute, the LM head run on supervised tokens only. Imported as ``_qlora_cost`` by
benchmarks/gpu_qlora.py and benchmarks/gpu_smoke.py (their folder is on ``sys.path``).

FLOPs, counted as 2 per multiply-add, matmuls only (no norms, activations, softmax, 4-bit dequantisation):

* ``N_lin``: weights of the decoder's linear layers (q, k, v, o, gate, up, down × layers); ``N_lora``: LoRA A + B;
  ``H`` hidden size, ``V`` vocabulary, ``n_h·d_h`` attention width, ``n_L`` layers;
* ``T`` tokens, ``S`` tokens whose logits are computed, ``P`` query-key pairs attended (causal, per segment:
  Σ L_s(L_s+1)/2 for segment lengths L_s).

Model FLOPs (the work training needs; MFU): forward ``2·N_lin·T + 2·N_lora·T + 4·n_h·d_h·n_L·P + 2·H·V·S``; backward
``2·N_lin·T`` (input gradients only: the base is frozen, so no weight gradients, which is why "6N" overstates)
``+ 4·N_lora·T`` (input and weight gradients) ``+ 8·n_h·d_h·n_L·P`` (dQ, dK, dV: twice the forward) ``+ 2·H·V·S``
(input gradient of the frozen head). Total ``4·N_lin·T + 6·N_lora·T + 12·n_h·d_h·n_L·P + 4·H·V·S``, with T the
real tokens, S the supervised ones and P the real causal pairs.

Hardware FLOPs (what the GPU executes; HFU): the same terms over what the kernels really compute (padding slots
in T; all rows × width² pairs in P for a masked sdpa/eager kernel, which cannot skip masked blocks, exact pairs for
flash varlen; every token in S for an implementation that computes all logits) plus gradient checkpointing's
recomputation of each decoder layer's forward in backward: ``+ 2·N_rec·T + 2·N_lora·T + 4·n_h·d_h·n_L·P``, where
``N_rec = N_lin`` minus the down projections: torch's non-reentrant checkpoint stops recomputing once it has every
tensor backward needs, and a frozen down_proj (the layer's last matmul) needs none (no weight gradient).

Checked against ``torch.utils.flop_counter`` on a real forward + backward (tests/test_gpu_benchmark_wiring.py):
equal, with and without checkpointing. Not counted: layer 0's q/k/v input gradients, which training never computes
(the embeddings need no gradient): they are under 0.5 % of the total on Mistral-7B's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

GIB = 2**30
#: Dense bf16 tensor-core peaks by datasheet (TFLOP/s), matched against ``torch.cuda.get_device_name()``; the first
#: key found in the name wins (so "H100 PCIe" before "H100"). On this workplace's H200 an 8192³ bf16 matmul ran at
#: ~790 TFLOP/s (device notes): MFU here is against the datasheet figure.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10G": 70.0, "RTX 4090": 165.2}  # fmt: skip
#: bytes per NF4 weight with double quantisation: 4 bits + an 8-bit absmax per 64-weight block + an fp32 constant
#: per 256 such blocks.
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass(frozen=True)
class Shape:
    """The counts the formulas need, read off a model built on the meta device (no weights, no memory)."""

    linear: int  # N_lin
    recomputed: int  # N_rec: N_lin without the (frozen) down projections
    lora: int  # N_lora
    hidden: int
    intermediate: int
    kv_width: int  # num_key_value_heads x head_dim
    attention_width: int  # num_attention_heads x head_dim
    vocab: int
    layers: int


def shape_of(config: Any, lora_r: int, target_modules: list[str]) -> Shape:
    """Count the decoder's linear weights and LoRA parameters of ``config`` with LoRA ``r`` on ``target_modules``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
        linears = {n: m.weight.numel() for n, m in base.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
        model = get_peft_model(base, LoraConfig(r=lora_r, target_modules=list(target_modules), task_type="CAUSAL_LM"))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    down = 0 if "down_proj" in target_modules else sum(v for n, v in linears.items() if n.endswith("down_proj"))
    linear = sum(linears.values())
    return Shape(linear=linear, recomputed=linear - down, lora=lora, hidden=config.hidden_size,
                 intermediate=config.intermediate_size, kv_width=config.num_key_value_heads * head_dim,
                 attention_width=config.num_attention_heads * head_dim, vocab=config.vocab_size,
                 layers=config.num_hidden_layers)  # fmt: skip


def causal_pairs(lengths: list[int]) -> int:
    """Query-key pairs of causal attention within segments of these lengths: Σ L(L+1)/2."""
    return sum(n * (n + 1) // 2 for n in lengths)


def model_flops(s: Shape, tokens: int, logit_tokens: int, pairs: int) -> int:
    """The step's necessary FLOPs: frozen base (forward + input gradient), LoRA (forward + both gradients), causal
    attention (forward + twice that backward), the frozen head on ``logit_tokens`` (forward + input gradient)."""
    attention = 4 * s.attention_width * s.layers * pairs
    return 4 * s.linear * tokens + 6 * s.lora * tokens + 3 * attention + 4 * s.hidden * s.vocab * logit_tokens


def hardware_flops(s: Shape, tokens: int, logit_tokens: int, pairs: int) -> int:
    """:func:`model_flops` over what the kernels compute, plus recomputing every decoder layer's forward
    (gradient checkpointing)."""
    recompute = 2 * s.recomputed * tokens + 2 * s.lora * tokens + 4 * s.attention_width * s.layers * pairs
    return model_flops(s, tokens, logit_tokens, pairs) + recompute


def peak_tflops(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its name, or None if not in :data:`PEAK_BF16_TFLOPS`."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def memory_estimate(s: Shape, micro_batch: int, length: int, supervised_share: float) -> dict[str, float]:
    """Peak allocated GPU memory (bytes) of a step, by component; the residual stream and the logits in bf16.

    * ``nf4``: ``N_lin`` at :data:`NF4_DOUBLE_QUANT_BYTES`; ``float_layers``: embeddings + lm_head (untied) + norms
      in bf16 (nlicot/precision.py);
    * ``lora_and_optimizer``: fp32 weights (4 B) + fp32 gradients (4 B) + paged 8-bit AdamW's two states (2 B);
    * ``checkpoints``: each decoder layer's input, B·L·H bf16 values, kept from forward to backward;
    * ``layer_recompute``: one layer's saved activations during its backward, per token ≈ 20·H (two RMSNorms with
      fp32 internals) + 12·H (LoRA on up to four inputs under autocast: dropout mask + bf16 copy) + 4·H (q/k/v/o
      inputs) + 2·(H + 2·kv) (sdpa's q, k, v) + 4·(H + kv) (RoPE) + 8·I (gate, up, SiLU, product), and as much
      again for its gradients;
    * ``logits``: supervised tokens × V × 14 B (bf16 head output, its fp32 copy, log-softmax, its gradient);
    The peak is the fixed part + checkpoints + the larger of the logits phase and one layer's backward.
    """
    h, kv, i = s.hidden, s.kv_width, s.intermediate
    tokens = micro_batch * length
    per_token_layer = 20 * h + 12 * h + 4 * h + 2 * (h + 2 * kv) + 4 * (h + kv) + 8 * i
    parts = {
        "nf4": s.linear * NF4_DOUBLE_QUANT_BYTES,
        "float_layers": (2 * s.vocab * h + (2 * s.layers + 1) * h) * 2,
        "lora_and_optimizer": s.lora * (4 + 4 + 2),
        "checkpoints": s.layers * tokens * h * 2,
        "layer_recompute": 2 * per_token_layer * tokens,
        "logits": supervised_share * tokens * s.vocab * 14,
    }
    fixed = parts["nf4"] + parts["float_layers"] + parts["lora_and_optimizer"]
    parts["peak"] = fixed + parts["checkpoints"] + max(parts["layer_recompute"], parts["logits"])
    return parts
