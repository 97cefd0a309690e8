"""Batched predict vs one ``generate`` call per example, on the tiny model, CPU, same run.

    python benchmarks/predict_speed.py [--n 64] [--max-new-tokens 64] [--batch-size 32] [--repeats 2]

Both sides decode greedily with the KV cache and no JSON stopping, so both do the same work: every row runs to
``max_new_tokens`` unless the random model happens to write EOS (then the baseline does *less* work, which only
flatters it). The script checks that both produce the same tokens, then prints examples/s and the ratio.
Target from issue 5: batched >= 5x the one-at-a-time baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLICOT_CACHE", str(REPO / ".cache" / "nlicot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: E402

from nlicot.generation import DEFAULT_BATCH_SIZE, generate_batched  # noqa: E402
from nlicot.hub import load_tokenizer, resolve_model_path  # noqa: E402
from nlicot.prompt import encode_prompts  # noqa: E402

TARGET = 5.0


def demo_prompts(tokenizer, n: int) -> list[list[int]]:
    """``n`` prompts from the demo corpus (cycled if it has fewer rows)."""
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "train.jsonl").read_text().splitlines() if line]
    rows = [rows[i % len(rows)] for i in range(n)]
    return encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])


@torch.inference_mode()
def one_at_a_time(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """The baseline: a plain ``generate`` per prompt (no padding needed, cache on, greedy)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    outputs = []
    for prompt in prompts:
        new = model.generate(input_ids=torch.tensor([prompt]), generation_config=config)[0, len(prompt) :].tolist()
        outputs.append(new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new)
    return outputs


def best_of(repeats: int, fn):
    """(result, fastest wall time): the CPU is shared, so the minimum is the least disturbed measurement."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side; the fastest counts")
    args = parser.parse_args()

    tokenizer = load_tokenizer("tiny")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny")).eval()
    prompts = demo_prompts(tokenizer, args.n)
    # Warm-up: the first generate call pays one-off set-up costs that belong to neither side.
    generate_batched(model, tokenizer, prompts[:2], max_new_tokens=4, stop_at_json=False)
    one_at_a_time(model, tokenizer, prompts[:1], 4)

    base, base_s = best_of(args.repeats, lambda: one_at_a_time(model, tokenizer, prompts, args.max_new_tokens))
    batched, batched_s = best_of(
        args.repeats,
        lambda: generate_batched(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size, stop_at_json=False)  # fmt: skip
    )
    same = sum(b.token_ids == r for b, r in zip(batched, base))
    base_tokens = sum(len(r) for r in base)
    batched_tokens = sum(b.num_tokens for b in batched)
    ratio = base_s / batched_s
    lengths = sorted(map(len, prompts))
    print(f"tiny Mistral, CPU, {torch.get_num_threads()} threads, {args.n} demo prompts ({lengths[0]}-{lengths[-1]} "
          f"tokens), {args.max_new_tokens} new tokens, greedy, fastest of {args.repeats} runs per side")  # fmt: skip
    print(f"one generate per example : {args.n / base_s:8.1f} examples/s  {base_tokens / base_s:8.0f} tokens/s  "
          f"({base_s:.2f} s)")  # fmt: skip
    print(f"batched (batch size {args.batch_size:>3}) : {args.n / batched_s:8.1f} examples/s  "
          f"{batched_tokens / batched_s:8.0f} tokens/s  ({batched_s:.2f} s)")  # fmt: skip
    print(f"identical outputs        : {same}/{args.n}")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"speed-up                 : {ratio:.1f}x (target >= {TARGET:.0f}x: {verdict})")


if __name__ == "__main__":
    main()
