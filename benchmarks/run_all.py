"""Run every CPU benchmark in turn and print one table of their figures (``--write`` also puts it in the README).

    python benchmarks/run_all.py [--write]

Each script runs in its own process, one after another (they would otherwise compete for the same cores), and
prints its own output, baseline included; this script reads the headline figures back from that output. About
6 minutes on 2 idle cores, longer when they are busy (the budget is 15). A script that fails, or whose figures
cannot be read, is reported and makes the exit status non-zero; ``--write`` then leaves the README untouched.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from _common import REPO, machine

from nlicot.atomic import atomic_write_text

README = REPO / "benchmarks" / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
GPU_ROW = ("QLoRA training on a GPU (Mistral-7B-v0.3)",
           "not measured here — benchmarks/gpu_qlora.py needs a CUDA GPU",
           "", "", "", "`python benchmarks/gpu_qlora.py`")

Row = tuple[str, str, str, str, str, str]  # benchmark, nlicot, baseline, ratio, target + verdict, command


def _find(pattern: str, text: str) -> tuple[str, ...]:
    """The groups of ``pattern``'s first match; ValueError names the figure that is missing."""
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        raise ValueError(f"no line matching {pattern!r}")
    return m.groups()


def _packing(out: str, cmd: str) -> list[Row]:
    bare = _find(r"bare tokenizer calls \(baseline\):\s+([\d.]+) s", out)[0]
    cold, over, cold_verdict = _find(
        r"cold, empty cache\s+:\s+([\d.]+) s\s+([\d.]+)x baseline \(target <= 60 s: ([\w ]+)\)", out)
    cached, faster, cached_verdict = _find(
        r"from the cache\s+:\s+([\d.]+) s\s+(\d+)x faster than cold \(target <= 3 s: ([\w ]+)\)", out)
    rows = [
        ("Data pipeline: `setup('fit')` on 40,000 rows, empty cache", f"{cold} s", f"{bare} s bare tokenizer calls",
         f"{over}x the bare calls", f"<= 60 s: {cold_verdict}", cmd),
        ("Data pipeline: the same call again (from the cache)", f"{cached} s", f"{cold} s cold", f"{faster}x faster",
         f"<= 3 s: {cached_verdict}", cmd),
    ]  # fmt: skip
    for title, label, target in (("synthetic corpus", "40,000 rows, seed length profile", 95),
                                 ("data/demo/train.jsonl", "data/demo/train.jsonl", 90)):  # fmt: skip
        section = out[out.index(f"\n{title}:"):]
        bfd = _find(r"plain BFD simulation, rows \d+ wide\s+([\d.]+) %", section)[0]
        seed = _find(r"padded, random batches \(seed\)\s+([\d.]+) %", section)[0]
        share, verdict, ratio = _find(r"nlicot default ([\d.]+) % \(target >= \d+ %: ([\w ]+)\); vs seed's padded "
                                      r"random batches ([\d.]+)x", section)  # fmt: skip
        rows.append((f"Packing: real-token share of micro-batches of 16, {label}", f"{share} %",
                     f"{seed} % padded random batches; {bfd} % plain BFD into 512-token rows",
                     f"{ratio}x / {float(share) / float(bfd):.3f}x", f">= {target} %: {verdict}", cmd))  # fmt: skip
    return rows


def _train_throughput(out: str, cmd: str) -> list[Row]:
    engines = ("nlicot", "trl-padded", "trl-packed")
    rate = {e: _find(rf"^{e}\s+(\d+)\s+\d+\s+[\d.]+%\s+\d+\s+(\d+) MiB", out) for e in engines}
    ratios = {e: _find(rf"nlicot vs {e}: ([\d.]+)x \(target >= ([\d.]+)x: ([\w ]+)\)", out)
              for e in ("trl-padded", "trl-packed")}  # fmt: skip
    (nl, nl_rss), (pad, pad_rss), (pack, pack_rss) = rate["nlicot"], rate["trl-padded"], rate["trl-packed"]
    r_pad, r_pack = ratios["trl-padded"], ratios["trl-packed"]
    return [
        ("Training throughput: real tokens/s, tiny NF4 Mistral + LoRA, CPU fp32, demo corpus", f"{nl} tokens/s",
         f"TRL SFTTrainer {pad} (padded) / {pack} (packed BFD, padding-free)", f"{r_pad[0]}x / {r_pack[0]}x",
         f">= {r_pad[1]}x / >= {r_pack[1]}x: {r_pad[2]} / {r_pack[2]}", cmd),
        ("Training peak RSS (same runs)", f"{nl_rss} MiB", f"TRL {pad_rss} MiB (padded) / {pack_rss} MiB (packed)",
         f"{int(pad_rss) / int(nl_rss):.1f}x / {int(pack_rss) / int(nl_rss):.1f}x less", "", cmd),
    ]  # fmt: skip


def _predict_speed(out: str, cmd: str) -> list[Row]:
    base = _find(r"^one generate per example\s*:\s+([\d.]+) examples/s", out)[0]
    batched = _find(r"^batched \(batch size\s*(\d+)\)\s*:\s+([\d.]+) examples/s", out)
    ratio, target, verdict = _find(r"speed-up\s*:\s+([\d.]+)x \(target >= ([\d.]+)x: ([\w ]+)\)", out)
    return [(f"Predict: batched generation (batch {batched[0]}) vs one `generate` per example, tiny model, CPU",
             f"{batched[1]} examples/s", f"{base} examples/s", f"{ratio}x", f">= {target}x: {verdict}", cmd)]


def _data_gen(out: str, cmd: str) -> list[Row]:
    base = _find(r"concurrency\s+1 \(baseline\):\s+[\d.]+ s\s+([\d.]+) rows/s", out)[0]
    conc, rate = _find(r"concurrency\s+(\d+)\s*:\s+[\d.]+ s\s+([\d.]+) rows/s", out)
    ratio, target, verdict = _find(r"speed-up: ([\d.]+)x \(target >= ([\d.]+)x: ([\w ]+)\)", out)
    return [(f"data_gen generate: concurrency {conc} vs 1, fake API at 100 ms/request", f"{rate} rows/s",
             f"{base} rows/s", f"{ratio}x", f">= {target}x: {verdict}", cmd)]


@dataclass(frozen=True)
class Benchmark:
    script: str
    parse: Callable[[str, str], list[Row]]

    @property
    def command(self) -> str:
        return f"`python benchmarks/{self.script}`"


BENCHMARKS = (
    Benchmark("packing.py", _packing),
    Benchmark("train_throughput.py", _train_throughput),
    Benchmark("predict_speed.py", _predict_speed),
    Benchmark("data_gen_concurrency.py", _data_gen),
)


def run(bench: Benchmark) -> tuple[list[Row], str | None]:
    """Run one script, echoing its output live; (its table rows, or the reason there are none)."""
    print(f"\n=== {bench.script} ===", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty stderr cannot block the child
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / bench.script)], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=err)  # fmt: skip
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        proc.wait()
        err.seek(0)
        err_tail = err.read()[-3000:]
    print(f"--- {bench.script}: {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    if proc.returncode != 0:
        print(err_tail, file=sys.stderr)
        return [], f"exited {proc.returncode}"
    try:
        return bench.parse("".join(lines), bench.command), None
    except ValueError as e:
        return [], f"figures not found in its output ({e})"


def table(rows: list[Row]) -> str:
    facts = machine()
    head = (f"Measured {date.today().isoformat()} on {facts['cores']} CPU cores ({facts['cpu']}), {facts['ram']} RAM, "
            f"torch {facts['torch']} ({facts['threads']} threads), Python {facts['python']}; no GPU. "
            "The cores were shared with other work, so timings carry noise; every baseline ran in the same "
            "invocation, on the same machine, right next to nlicot's figure.\n\n")  # fmt: skip
    lines = ["| Benchmark | nlicot | Baseline (same run) | Ratio | Target | Command |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in [*rows, GPU_ROW]]
    return head + "\n".join(lines) + "\n"


def write_readme(text: str) -> None:
    """Replace the block between the markers, atomically."""
    old = README.read_text(encoding="utf-8")
    if START not in old or END not in old:
        raise SystemExit(f"error: {README} lacks the {START} / {END} markers")
    new = old[: old.index(START) + len(START)] + "\n" + text + old[old.index(END) :]
    atomic_write_text(README, new)  # mode from the umask, as for any new file (mkstemp's 0600 was kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update the table in {README.relative_to(REPO)}")
    args = parser.parse_args()

    rows: list[Row] = []
    problems = []
    for bench in BENCHMARKS:
        if not (REPO / "benchmarks" / bench.script).is_file():
            print(f"\n=== {bench.script}: not present, skipped ===")
            continue
        found, problem = run(bench)
        rows += found
        if problem:
            problems.append(f"{bench.script}: {problem}")
    text = table(rows)
    print("\n" + text)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(1)
    if args.write:
        write_readme(text)
        print(f"updated {README.relative_to(REPO)}")


if __name__ == "__main__":
    main()
