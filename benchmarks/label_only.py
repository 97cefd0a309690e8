"""How few paid thoughts does the task need when the other rows carry labels only? (issue 25)

    python benchmarks/label_only.py [--seeds 0 1 2] [--budget-minutes 40] [--configs a b c d e] [--json out.json]
    python benchmarks/label_only.py --smoke      # seconds-scale wiring check: tiny steps, 8 rows, one candidate

Configurations, all on ``data/synth`` from the offline ``tiny-nli`` base:
  (a) SFT on 100 % of the train rows with thoughts      configs/sft_fraction.yaml, data.thought_fraction=1
  (b) SFT on 10 % only                                   configs/sft_fraction.yaml
  (c) (b) + GRPO on the other 90 %, labels only          configs/grpo_labels.yaml from (b)'s adapter
  (d) as (c) with 25 %
  (e) GRPO from the base, no SFT (does the format emerge?) configs/grpo_labels.yaml, adapter_path null, every row

Method (the table says what was tuned on what):
  * every hyper-parameter candidate of a configuration (steps, learning rate) is trained with seed 0 and scored by
    greedy accuracy on the **val** split; a candidate whose wall time (all of its fits, model loading included)
    exceeds ``--budget-minutes`` is excluded; the best val candidate is the configuration's final setting;
  * the final setting is trained once per seed (seed → ``seed_everything``, ``data.thought_seed``,
    ``model.sample_seed``: the thought subset changes with the seed too) and evaluated on **test** once per seed;
  * mean ± sd (sample sd) of test accuracy over the seeds is printed, with the val figure it was chosen by;
  * stage-wise: (c) takes the SFT setting val chose for (b) (the same 10 % of thoughts, the very same adapters, whose
    minutes still count in (c)'s) and searches only ``--grpo-grid`` on val.
Beside it: what data_gen's dry-run estimator (data_gen/estimate.py) prices generate + reflect at for ``--rows``
rows at 100 % vs 10 % thoughts (reflect re-asks only the rows whose first label was wrong: ``--wrong-share``, an
assumption printed with the figure).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO, SYNTH, greedy_test_eval, machine, nlicot_cli, quiet_logs

from nlicot.atomic import atomic_write_text

#: Candidates per configuration: SFT (steps, LR) and GRPO (steps, LR). Small on purpose: each is a full fit.
SFT_GRID = {"a": [(300, 3e-3), (500, 3e-3)], "b": [(100, 3e-3), (200, 3e-3)], "d": [(150, 3e-3), (300, 3e-3)]}
GRPO_GRID = [(60, 3e-4), (120, 3e-4)]
FRACTION = {"a": 1.0, "b": 0.1, "c": 0.1, "d": 0.25}
SMOKE_FIT = ["--trainer.limit_val_batches=0", "--generation_eval.rows=0", "--model.generation.max_new_tokens=24",
             "--model.grpo.brevity_free_tokens=8", "--model.grpo.num_generations=2", "--data.micro_batch_size=2"]


def fit(config: str, out: Path, args: list[str]) -> float:
    """Wall seconds of one ``python -m nlicot fit`` (the budget counts everything a user waits for)."""
    return nlicot_cli("fit", "--config", str(REPO / "configs" / config), f"--trainer.default_root_dir={out}",
                      f"--checkpoint.dirpath={out / 'ckpt'}", "--trainer.limit_val_batches=0",
                      "--generation_eval.rows=0", *args)  # fmt: skip


def sft_fit(fraction: float, sft: tuple[int, float], seed: int, work: Path, seeds: list[str],
            small: list[str]) -> tuple[Path, float]:
    """One SFT fit, shared by every configuration with the same (fraction, steps, LR, seed): (c) starts from the
    very adapter (b) measured. Its wall seconds still count in each configuration's minutes and budget."""
    steps, lr = sft
    out = work / f"sft-f{fraction}-n{steps}-lr{lr}-s{seed}"
    done = out / "seconds.txt"
    if not done.is_file():
        seconds = fit("sft_fraction.yaml", out, [
            *seeds, f"--data.thought_fraction={fraction}", f"--trainer.max_steps={steps}",
            f"--checkpoint.every_n_train_steps={steps}", f"--model.optim.learning_rate={lr}",
            *[a for a in small if a.startswith(("--trainer", "--generation", "--data"))]])
        atomic_write_text(done, f"{seconds}")
    return out / "ckpt" / "adapter", float(done.read_text())


def run_config(name: str, sft: tuple[int, float] | None, grpo: tuple[int, float] | None, seed: int, out: Path,
               smoke: bool) -> tuple[Path, float]:
    """Train one configuration with one candidate and seed: the final adapter folder and the wall seconds."""
    seeds = [f"--seed_everything={seed}", f"--data.thought_seed={seed}"]
    small = SMOKE_FIT if smoke else []
    seconds, adapter = 0.0, None
    if sft is not None:
        adapter, sft_seconds = sft_fit(FRACTION[name], sft, seed, out.parent, seeds, small)
        seconds += sft_seconds
    if grpo is not None:
        steps, lr = grpo
        rows = [f"--data.thought_fraction={FRACTION[name]}", "--data.prompts=label_only"] if name in ("c", "d") \
            else ["--data.thought_fraction=1.0", "--data.prompts=all"]
        seconds += fit("grpo_labels.yaml", out / "grpo", [
            *seeds, f"--model.generation.seed={seed}", *rows, f"--trainer.max_steps={steps}",
            f"--checkpoint.every_n_train_steps={steps}", f"--model.optim.learning_rate={lr}",
            f"--model.init_args.adapter_path={adapter or 'null'}", *small])
        adapter = out / "grpo" / "ckpt" / "adapter"
    assert adapter is not None
    return adapter, seconds


Setting = tuple[int, float]


def candidates(name: str, smoke: bool, grpo_grid: list[Setting],
               chosen_sft: dict[float, Setting]) -> list[tuple[Setting | None, Setting | None]]:
    """(SFT candidate, GRPO candidate) pairs of a configuration; (c) reuses (b)'s SFT grid, (d) its own.

    Stage-wise tuning: where an SFT-only configuration with the same thought fraction was measured earlier in the
    run ((b) before (c)), its val-chosen SFT setting is the SFT stage and only GRPO is searched (on val).
    """
    if smoke:
        return [((2, 3e-3) if name != "e" else None, (2, 3e-4) if name in ("c", "d", "e") else None)]
    sft = {"a": SFT_GRID["a"], "b": SFT_GRID["b"], "c": SFT_GRID["b"], "d": SFT_GRID["d"], "e": [None]}[name]
    if name in ("c", "d") and FRACTION[name] in chosen_sft:
        sft = [chosen_sft[FRACTION[name]]]
    grpo = grpo_grid if name in ("c", "d", "e") else [None]
    return [(s, g) for s in sft for g in grpo]


def measure(name: str, seeds: list[int], budget_s: float, rows: int | None, work: Path, smoke: bool,
            grpo_grid: list[Setting], chosen_sft: dict[float, Setting]) -> dict[str, Any]:
    tried = []
    for i, (sft, grpo) in enumerate(candidates(name, smoke, grpo_grid, chosen_sft)):
        adapter, seconds = run_config(name, sft, grpo, seeds[0], work / f"{name}-cand{i}-s{seeds[0]}", smoke)
        val = greedy_test_eval(adapter, rows, split="val")["accuracy"]
        tried.append({"sft": sft, "grpo": grpo, "seconds": seconds, "val_accuracy": val, "adapter": adapter,
                      "within_budget": seconds <= budget_s})
        print(f"  ({name}) candidate sft={sft} grpo={grpo}: val {val:.3f} in {seconds / 60:.1f} min"
              + ("" if seconds <= budget_s else " (over budget: excluded)"), flush=True)
    fair = [t for t in tried if t["within_budget"]]
    if not fair:
        return {"config": name, "error": "no candidate finished within the budget", "tried": tried}
    best = max(fair, key=lambda t: t["val_accuracy"])
    tests, seconds = [], []
    for seed in seeds:
        if seed == seeds[0]:
            adapter, secs = best["adapter"], best["seconds"]
        else:
            adapter, secs = run_config(name, best["sft"], best["grpo"], seed, work / f"{name}-final-s{seed}", smoke)
        tests.append(greedy_test_eval(adapter, rows, split="test")["accuracy"])  # test: once per final config+seed
        seconds.append(secs)
        print(f"  ({name}) seed {seed}: test {tests[-1]:.3f} in {secs / 60:.1f} min", flush=True)
    return {"config": name, "sft": best["sft"], "grpo": best["grpo"], "val_accuracy": best["val_accuracy"],
            "test_accuracy": tests, "mean": statistics.mean(tests),
            "sd": statistics.stdev(tests) if len(tests) > 1 else 0.0, "minutes": [s / 60 for s in seconds],
            "tried": [{k: v for k, v in t.items() if k != "adapter"} for t in tried]}


def estimate_cost(rows: int, wrong_share: float, work: Path) -> dict[str, str]:
    """data_gen's own ``--dry-run`` of generate and reflect, scaled to ``rows`` rows.

    The estimator prices the synthetic train pairs (at most all 3,000 of them: generate keeps each pair once, so
    cycling them would price 3,000 rows however many were asked for) and the figure is scaled linearly to
    ``rows``, as the estimator itself extrapolates from a 2,000-row sample. Reflect's input stands in for
    generate's output with ``wrong_share`` of the labels wrong (reflect re-asks exactly those).
    """
    synth = [json.loads(line) for line in (SYNTH / "train.jsonl").open()]
    scale, rows = rows / min(rows, len(synth)), min(rows, len(synth))
    work.mkdir(parents=True, exist_ok=True)
    inp, gen = work / "rows.csv", work / "generated.jsonl"
    with inp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "premise", "hypothesis", "label"])
        for i in range(rows):
            r = synth[i % len(synth)]
            writer.writerow([f"row{i}", r["premise"], r["hypothesis"], r["label"]])
    with gen.open("w") as f:
        wrong_every = max(1, round(1 / wrong_share)) if wrong_share > 0 else 0
        for i in range(rows):
            r = synth[i % len(synth)]
            wrong = wrong_every and i % wrong_every == 0
            f.write(json.dumps({"id": f"row{i}", "premise": r["premise"], "hypothesis": r["hypothesis"],
                                "label": r["label"], "thought_process": r["thought_process"],
                                "predicted_label": 1 - r["label"] if wrong else r["label"]}) + "\n")
    out = {}
    for stage, source in (("generate", inp), ("reflect", gen)):
        cmd = [sys.executable, "-m", "data_gen", stage, "--config", str(REPO / "configs" / "data_gen" / f"{stage}.yaml"),
               f"--input={source}", f"--output={work / stage / 'out.jsonl'}", "--dry-run",
               f"--prices={REPO / 'configs' / 'data_gen' / 'prices.yaml'}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: data_gen {stage} --dry-run failed:\n{proc.stderr[-2000:]}")
        sync = next(line for line in proc.stdout.splitlines() if line.strip().startswith("sync API"))
        out[stage] = f"£{float(sync.split()[2].lstrip('£')) * scale:.4f}"  # expected sync-API cost, scaled
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-minutes", type=float, default=40.0, help="wall time a candidate may take")
    parser.add_argument("--configs", nargs="+", default=list("abcde"), choices=list("abcde"))
    parser.add_argument("--rows", type=int, default=None, help="val/test rows evaluated (default: all)")
    parser.add_argument("--cost-rows", type=int, default=40_000, help="rows priced by the estimator")
    parser.add_argument("--wrong-share", type=float, default=0.2, help="share of generate's labels assumed wrong")
    parser.add_argument("--smoke", action="store_true", help="wiring check: 2-step fits, 8 rows, one candidate")
    parser.add_argument("--grpo-grid", nargs="+", default=[f"{n}:{lr:g}" for n, lr in GRPO_GRID],
                        help="GRPO candidates as STEPS:LR (each a full fit per SFT candidate)")
    parser.add_argument("--json", type=Path, default=None, help="results, rewritten after every configuration")
    args = parser.parse_args()
    quiet_logs()
    rows = 8 if args.smoke else args.rows
    cost_rows = 200 if args.smoke else args.cost_rows
    budget = args.budget_minutes * 60
    grpo_grid = [(int(n), float(lr)) for n, lr in (g.split(":") for g in args.grpo_grid)]
    results: list[dict[str, Any]] = []
    chosen_sft: dict[float, Setting] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.configs:
            print(f"({name}) …", flush=True)
            results.append(measure(name, args.seeds, budget, rows, work, args.smoke, grpo_grid, chosen_sft))
            if "error" not in results[-1] and results[-1]["grpo"] is None:
                chosen_sft[FRACTION[name]] = results[-1]["sft"]
            if args.json:
                atomic_write_text(args.json, json.dumps({"results": results}, indent=1, default=str))
        full = estimate_cost(cost_rows, args.wrong_share, work / "cost100")
        tenth = estimate_cost(cost_rows // 10, args.wrong_share, work / "cost10")
    print(f"\nlabel-only benchmark ({'SMOKE: not a measurement' if args.smoke else 'measured'}); {machine()}")
    print(f"hyper-parameters chosen on val (seed {args.seeds[0]}), test once per seed; seeds {args.seeds}; "
          f"budget {args.budget_minutes:g} min per candidate")
    print("| config | SFT (steps, LR) | GRPO (steps, LR) | val (chosen on) | test mean ± sd | minutes |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| ({r['config']}) | {r['error']} | | | | |")
            continue
        print(f"| ({r['config']}) | {r['sft']} | {r['grpo']} | {r['val_accuracy']:.3f} | "
              f"{r['mean']:.3f} ± {r['sd']:.3f} | {statistics.mean(r['minutes']):.1f} |")
    by = {r["config"]: r for r in results if "error" not in r}
    if "a" in by and "c" in by:
        gap = 100 * (by["a"]["mean"] - by["c"]["mean"])
        print(f"(c) vs (a): {gap:+.1f} points behind; target (c) within 2 points of (a): "
              f"{'met' if gap <= 2 else 'missed'}")
    print(f"API cost (data_gen estimator, expected, sync API; reflect assumes {args.wrong_share:.0%} wrong labels): "
          f"{cost_rows} rows with thoughts: generate {full['generate']} + reflect {full['reflect']}; "
          f"10 % ({cost_rows // 10} rows): generate {tenth['generate']} + reflect {tenth['reflect']}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"results": results, "cost": {"all": full, "tenth": tenth}},
                                                indent=1, default=str))


if __name__ == "__main__":
    main()
