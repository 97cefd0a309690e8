"""Self-consistency (k sampled chains, majority vote) vs greedy decoding on one deliberately under-trained SFT adapter.

    python benchmarks/self_consistency.py [--rows 420] [--k 8] [--temperature 0.7] [--top-p 0.95]

1. The under-trained SFT adapter on the learnable synthetic set that the GRPO benchmark starts from too
   (``benchmarks/_common.py::undertrained_sft``, seeded, trained once and cached).
2. ``python -m nlicot predict`` on the first ``--rows`` rows of ``data/synth/test.jsonl``, greedy (k = 1): the
   baseline accuracy and wall time.
3. The same with ``--model.generation.num_samples k``: vote accuracy, mean single-chain accuracy, the greedy
   reference chain decoded in the same batches (checked equal to run 2), ECE of the agreement confidence, accuracy at 50 % / 80 %
   coverage (most confident rows first), ties, wall time.
4. Prefill sharing, in process on the first ``--prefill-prompts`` prompts: wall time of the k chains with the
   prompt encoded once and the KV cache repeated (nlicot) vs the prompt repeated before the prefill as
   ``generate(num_return_sequences=k)`` does (same tokens, checked), and plain
   ``generate(do_sample=True, num_return_sequences=k)``.

Parse failures count as wrong everywhere. Timings on a shared CPU are noisy; the accuracies are not (seeded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    EVAL_MAX_NEW_TOKENS,
    REPO,
    SYNTH,
    add_start_arguments,
    machine,
    quiet_logs,
    sft_start,
)

PROMPTS_PER_BATCH = 16


def predict(adapter: Path, base: str, rows: Path, out: Path, *args: str) -> tuple[list[dict], dict, float]:
    """Records, metrics.json and wall seconds of one ``predict`` run of the adapter folder."""
    cmd = [sys.executable, "-m", "nlicot", "predict", "--config", "configs/demo.yaml",
           f"--model.model_name_or_path={base}", f"--model.adapter_path={adapter}", f"--data.predict_path={rows}",
           f"--predictions.output_dir={out}", f"--model.generation.max_new_tokens={EVAL_MAX_NEW_TOKENS}",
           "--trainer.enable_progress_bar=false", *args]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: predict failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return recs, json.loads((out / "metrics.json").read_text()), seconds


def prefill_timing(adapter: Path, base: str, data: list[dict], k: int, temperature: float, top_p: float,
                   repeats: int) -> None:
    """Time the k chains of the ``data`` prompts three ways with the trained adapter, fastest of ``repeats`` runs."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from nlicot.generation import JsonObjectStop, left_pad, sample_chains, token_pieces
    from nlicot.prompt import encode_prompts
    from nlicot.sft import NLICoTModule

    module = NLICoTModule(base, compute_dtype="float32", gradient_checkpointing=False, adapter_path=str(adapter))
    module.configure_model()
    model, tokenizer = module.model, module.tokenizer
    n, max_new_tokens = len(data), EVAL_MAX_NEW_TOKENS
    prompts = encode_prompts(tokenizer, [r["premise"] for r in data], [r["hypothesis"] for r in data])
    keys = [r["id"] for r in data]
    kwargs = {"num_samples": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
              "batch_size": n * k}  # fmt: skip
    config_hf = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                                 num_return_sequences=k, pad_token_id=tokenizer.pad_token_id)  # fmt: skip

    pieces = token_pieces(tokenizer)

    def hf_generate() -> None:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        stop = JsonObjectStop(pieces, ids.shape[1], n * k)  # the same per-row stop as nlicot's, so the same work
        model.eval()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config_hf,
                           stopping_criteria=StoppingCriteriaList([stop]))

    def best(fn) -> tuple[object, float]:
        times, result = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return result, min(times)

    shared, shared_s = best(lambda: sample_chains(model, tokenizer, prompts, keys, **kwargs))
    repeated, repeated_s = best(lambda: sample_chains(model, tokenizer, prompts, keys, share_prefill=False, **kwargs))
    _, hf_s = best(hf_generate)
    same = sum(a.samples == b.samples for a, b in zip(shared, repeated))
    same_tokens = sum([g.token_ids for g in a.samples] == [g.token_ids for g in b.samples]
                      for a, b in zip(shared, repeated))  # fmt: skip
    lengths = [len(p) for p in prompts]
    print(f"\nprefill sharing: {n} prompts ({min(lengths)}-{max(lengths)} tokens) x {k} chains, at most "
          f"{max_new_tokens} new tokens, stop at the closed JSON object, one batch, fastest of {repeats}")
    print(f"  nlicot, prompt encoded once, KV cache repeated k times : {shared_s:7.2f} s")
    print(f"  nlicot, prompt repeated k times before the prefill     : {repeated_s:7.2f} s "
          f"({repeated_s / shared_s:.2f}x the shared time); identical tokens on {same_tokens}/{n} prompts "
          f"({same}/{n} incl. log-probabilities)")  # fmt: skip
    print(f"  transformers generate(do_sample, num_return_sequences) : {hf_s:7.2f} s "
          f"({hf_s / shared_s:.2f}x; global RNG, so its chains depend on the batch)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="first rows of the test split (default: all)")
    parser.add_argument("--k", type=int, default=8, help="chains per example")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--prefill-prompts", type=int, default=8, help="prompts in the prefill timing (0 = skip)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side of the prefill timing")
    add_start_arguments(parser)
    args = parser.parse_args()
    quiet_logs()

    adapter, sft_s = sft_start(args.adapter, args.sft_steps)
    base = json.loads((adapter / "nlicot.json").read_text())["base_model"]
    data = [json.loads(line) for line in (SYNTH / "test.jsonl").read_text().splitlines() if line][: args.rows]
    info = machine()
    print(f"{info['cores']} cores ({info['cpu']}), torch {info['torch']} ({info['threads']} threads); shared CPU: "
          f"timings are noisy")  # fmt: skip
    trained = "given with --adapter" if sft_s is None else f"trained in {sft_s:.0f} s, the GRPO benchmark's recipe"
    print(f"SFT start: {adapter} (base {base}; {trained})")

    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "test.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in data))
        # Both runs decode PROMPTS_PER_BATCH prompts at a time (the vote run k + 1 sequences per prompt).
        greedy_recs, greedy_m, greedy_s = predict(adapter, base, rows, Path(tmp) / "greedy",
                                                  f"--model.generation.batch_size={PROMPTS_PER_BATCH}")  # fmt: skip
        vote_recs, vote_m, vote_s = predict(
            adapter, base, rows, Path(tmp) / "vote", f"--model.generation.num_samples={args.k}",
            f"--model.generation.batch_size={PROMPTS_PER_BATCH * (args.k + 1)}",
            f"--model.generation.temperature={args.temperature}", f"--model.generation.top_p={args.top_p}",
            "--model.generation.greedy_reference=true",
        )  # fmt: skip
    n = greedy_m["num_examples"]
    same_greedy = sum(g["predicted_label"] == v["greedy"]["predicted_label"] for g, v in zip(greedy_recs, vote_recs))
    ties = sum(r["tie"] for r in vote_recs)
    unparsed = sum(r["votes"]["unparsed"] for r in vote_recs) / (len(vote_recs) * args.k)
    length = {name: sum(r["generated_tokens"] for r in recs) / len(recs)
              for name, recs in (("greedy", greedy_recs), ("chains", [c for r in vote_recs for c in r["chains"]]))}
    print(f"\ntest split: first {n} rows of {SYNTH / 'test.jsonl'}; k = {args.k}, temperature {args.temperature}, "
          f"top-p {args.top_p}, max {EVAL_MAX_NEW_TOKENS} new tokens, parse failures count as wrong")  # fmt: skip
    print(f"greedy (k = 1)            : accuracy {greedy_m['accuracy']:.3f}, parse rate {greedy_m['parse_rate']:.3f}, "
          f"{length['greedy']:.0f} tokens/answer  ({greedy_s:.0f} s wall)")  # fmt: skip
    print(f"greedy reference chain    : accuracy {vote_m['greedy_accuracy']:.3f} (same label as the k = 1 run on "
          f"{same_greedy}/{len(vote_recs)} rows)")  # fmt: skip
    print(f"single sampled chain      : accuracy {vote_m['chain_accuracy']:.3f} (mean over chains); "
          f"{unparsed:.1%} of chains unparsed, {length['chains']:.0f} tokens/chain")  # fmt: skip
    delta = 100 * (vote_m["accuracy"] - greedy_m["accuracy"])
    print(f"vote of {args.k} (self-consistency): accuracy {vote_m['accuracy']:.3f} ({delta:+.1f} points vs greedy), "
          f"parse rate {vote_m['parse_rate']:.3f}, ties {ties}  ({vote_s:.0f} s wall, {vote_s / greedy_s:.1f}x greedy)")
    print(f"agreement confidence      : mean {vote_m['mean_confidence']:.3f}, ECE {vote_m['ece']:.3f} (10 bins)")
    print(f"selective prediction      : accuracy {vote_m['accuracy_at_coverage_50']:.3f} at 50 % coverage, "
          f"{vote_m['accuracy_at_coverage_80']:.3f} at 80 %, {vote_m['accuracy']:.3f} at 100 %")  # fmt: skip
    print("reliability (bin: rows, accuracy, mean confidence): " + "; ".join(
        f"{b['confidence_bin'][0]:.1f}-{b['confidence_bin'][1]:.1f}: {b['count']}, {b['accuracy']:.2f}, "
        f"{b['mean_confidence']:.2f}" for b in vote_m["reliability"] if b["count"]))  # fmt: skip
    if args.prefill_prompts:
        prefill_timing(adapter, base, data[: args.prefill_prompts], args.k, args.temperature, args.top_p,
                       args.repeats)


if __name__ == "__main__":
    main()
