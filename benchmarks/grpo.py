"""Does GRPO raise greedy test accuracy of a deliberately under-trained SFT adapter, without longer answers?

    python benchmarks/grpo.py [--grpo-steps N] [--test-rows 420] [--budget-minutes 40] [--json out.json]
                              [--fit-arg model.init_args.grpo.kl_coef=0 ...]

1. The shared under-trained SFT adapter (``_common.undertrained_sft_adapter``: the learnable synthetic set on the
   pretrained offline base, stopped early on purpose; cached, also the self-consistency benchmark's start).
2. Greedy test accuracy (parse failures count as wrong), parse rate and mean generated tokens of that adapter:
   the baseline, measured in this run.
3. ``python -m nlicot fit --config configs/grpo.yaml`` from that adapter for ``--grpo-steps`` optimizer steps,
   wall time measured (the CPU budget; model loading and validation included).
4. The same greedy test evaluation of the GRPO adapter.

Targets (issue 12): accuracy +10 points or more within the stated budget, mean completion length not growing.
The script prints whether each was met; it does not stop early or retry on a miss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import REPO, add_start_arguments, greedy_test_eval, machine, sft_start

TARGET_POINTS = 10.0


def config_steps() -> int:
    """The shipped recipe's length, so that a plain run measures ``configs/grpo.yaml`` as a user gets it."""
    import yaml

    return int(yaml.safe_load((REPO / "configs/grpo.yaml").read_text())["trainer"]["max_steps"])


def run_grpo(adapter: Path, out: Path, steps: int, learning_rate: float | None, fit_args: list[str]) -> float:
    """Wall seconds of the whole GRPO fit process (the budget counts everything a user waits for)."""
    cmd = [sys.executable, "-m", "nlicot", "fit", "--config", str(REPO / "configs/grpo.yaml"),
           f"--model.init_args.adapter_path={adapter}", f"--trainer.max_steps={steps}",
           f"--checkpoint.dirpath={out / 'ckpt'}", f"--trainer.logger.init_args.save_dir={out / 'tb'}",
           "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]  # validation is not the budget
    if learning_rate is not None:
        cmd.append(f"--model.init_args.optim.learning_rate={learning_rate}")
    cmd += [f"--{a.removeprefix('--')}" for a in fit_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: GRPO run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpo-steps", type=int, default=config_steps(),
                        help="optimizer steps (default: trainer.max_steps of configs/grpo.yaml)")
    parser.add_argument("--test-rows", type=int, default=420, help="first N rows of data/synth/test.jsonl")
    parser.add_argument("--budget-minutes", type=float, default=40.0, help="stated CPU budget for the GRPO run")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "bench" / "grpo")
    parser.add_argument("--json", type=Path, default=None)
    add_start_arguments(parser)
    parser.add_argument("--learning-rate", type=float, default=None, help="GRPO peak LR (default: configs/grpo.yaml)")
    parser.add_argument("--fit-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="one more setting for the GRPO fit, e.g. model.init_args.grpo.kl_coef=0 (repeatable)")
    args = parser.parse_args()

    adapter, sft_seconds = sft_start(args.adapter, args.sft_steps)
    before = greedy_test_eval(adapter, args.test_rows)
    print(f"SFT (under-trained) adapter {adapter}: test accuracy {before['accuracy']:.3f}, "
          f"parse rate {before['parse_rate']:.3f}, {before['generated_tokens']:.1f} generated tokens/answer")
    args.out.mkdir(parents=True, exist_ok=True)  # one folder per run: two runs started in one second must not share it
    out = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=args.out))
    seconds = run_grpo(adapter, out, args.grpo_steps, args.learning_rate, args.fit_arg)
    after = greedy_test_eval(out / "ckpt" / "adapter", args.test_rows)
    gain = 100 * (after["accuracy"] - before["accuracy"])
    longer = after["generated_tokens"] - before["generated_tokens"]
    within = seconds <= 60 * args.budget_minutes
    result = {
        "machine": machine(), "sft_seconds": sft_seconds, "grpo_steps": args.grpo_steps, "grpo_seconds": seconds,
        "budget_minutes": args.budget_minutes, "fit_args": args.fit_arg, "test_rows": before["rows"], "before": before, "after": after,
        "gain_points": gain, "length_change_tokens": longer,
        "met": {"gain": gain >= TARGET_POINTS and within, "length": longer <= 0.0, "budget": within},
        "run": str(out),
    }
    print(f"GRPO {args.grpo_steps} steps in {seconds / 60:.1f} min (budget {args.budget_minutes:g} min: "
          f"{'met' if within else 'missed'}): test accuracy {after['accuracy']:.3f} "
          f"({gain:+.1f} points; target >= +{TARGET_POINTS:g}: {'met' if result['met']['gain'] else 'missed'}), "
          f"parse rate {after['parse_rate']:.3f}, {after['generated_tokens']:.1f} generated tokens/answer "
          f"({longer:+.1f}; target <= 0: {'met' if result['met']['length'] else 'missed'})")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    _common.quiet_logs()
    main()
