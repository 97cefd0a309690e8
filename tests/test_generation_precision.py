"""Generation evaluation decodes in the arithmetic ``predict`` uses: a bf16 model generates under the same autocast
whether it is called inside Lightning's ``bf16-mixed`` predict context or from a callback outside any step."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from nlicot.args import GenerationConfig, LoRAConfig
from nlicot.corpus import load_rows
from nlicot.generation import compute_autocast
from nlicot.prompt import encode_prompts
from nlicot.sft import NLICoTModule


def test_generation_runs_under_the_predict_autocast_wherever_it_is_called(repo):
    torch.manual_seed(0)
    module = NLICoTModule("tiny", compute_dtype="bfloat16", generation=GenerationConfig(max_new_tokens=6),
                          lora=LoRAConfig(r=8, alpha=16))
    module.configure_model()
    seen: list[tuple[bool, torch.dtype]] = []
    lora = next(m for n, m in module.model.named_modules() if n.endswith("q_proj.lora_A.default"))
    lora.register_forward_hook(lambda *_: seen.append((torch.is_autocast_enabled("cpu"),
                                                       torch.get_autocast_dtype("cpu"))))  # fmt: skip
    rows = load_rows(str(repo / "data/demo/val.jsonl"))[:3]
    ids = encode_prompts(module.tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    rows = [r | {"prompt_ids": p} for r, p in zip(rows, ids)]

    outside = module.predict_records(rows)  # as GenerationEvalCallback calls it: no Lightning context
    outside_seen, seen[:] = list(seen), []
    with MixedPrecision("bf16-mixed", "cpu").predict_step_context():  # what trainer.predict wraps predict_step in
        inside = module.predict_records(rows)
    assert outside_seen and set(outside_seen) == set(seen) == {(True, torch.bfloat16)}
    assert outside == inside  # same tokens, same records


class Embedded(torch.nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2, dtype=dtype)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed


def test_autocast_follows_the_compute_dtype():
    for dtype, enabled in [(torch.float32, False), (torch.bfloat16, True), (torch.float16, True)]:
        with compute_autocast(Embedded(dtype)):
            assert torch.is_autocast_enabled("cpu") == enabled
            assert not enabled or torch.get_autocast_dtype("cpu") == dtype
