"""``tiny``: an offline stand-in for Mistral-7B-v0.3, a tiny *random-weight* ``MistralForCausalLM`` with the real v3
tokenizer.

Why: this workplace (and many CI machines) has no model hub. Everything that takes a hub id or a local path
also takes the name ``tiny`` (resolved by :mod:`nlicot.hub`, which builds the folder once into a cache), so the
real loading code (``from_pretrained``, bitsandbytes quantization, peft) is exercised unchanged.
The tokenizer is the one mistral-common ships for Mistral-7B-v0.3 (32,768 tokens), so token counts, prompt
ids and length filters are the real ones; only the weights are random.
"""

from __future__ import annotations

from pathlib import Path

from nlicot.offline.v3_tokenizer import write_v3_tokenizer

TINY_NAME = "tiny"
#: Bump when the recipe below changes so stale caches are rebuilt, never reused.
TINY_VERSION = 3
TINY_SEED = 1234


def tiny_config_kwargs() -> dict:
    """Mistral-7B-v0.3's architecture (GQA, RoPE theta 1e6, 32,768 vocab) shrunk to ~4.3 M parameters."""
    return dict(
        vocab_size=32768,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def folder_name() -> str:
    """The cache folder of ``tiny``: it carries :data:`TINY_VERSION`, so a changed recipe is rebuilt."""
    return f"tiny-mistral-v3-{TINY_VERSION}"


def build_tiny(folder: Path) -> None:
    """Write the tiny model + tokenizer into the empty ``folder`` (the caller makes that atomic)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = write_v3_tokenizer(folder)
    torch.manual_seed(TINY_SEED)
    model = MistralForCausalLM(MistralConfig(**tiny_config_kwargs()))
    # A wide output head (logit std ~2.4 instead of ~0.16) so that a LoRA on the attention can move the
    # output distribution: with the usual 0.02 everywhere the frozen random head pins every run near
    # ln(32768) and the demo shows nothing. Only the head: a wide body would amplify float noise.
    torch.nn.init.normal_(model.lm_head.weight, std=0.3)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
