"""The jsonargparse CLI: field docstrings as --help, --print_config round trips, today's flag spellings, one
``error:`` line for a bad key, and the fake API staying out of the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_gen.config import load_config, parse_config
from data_gen.pipeline import PipelineConfig
from data_gen.stages.build import BuildConfig
from data_gen.stages.generate import GenerateConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "data_gen"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def cli(dg, capsys):
    """``cli(*argv)`` -> (exit status, stderr) of the CLI run in-process (errors come before any log line)."""

    def run(*argv: object) -> tuple[int, str]:
        capsys.readouterr()
        return dg(*argv), capsys.readouterr().err

    return run


def test_the_real_command_prints_one_error_line_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: a.csv\noutput: o.jsonl\nconcurency: 4\n")
    result = subprocess.run([sys.executable, "-m", "data_gen", "generate", "--config", str(path)],
                            capture_output=True, text=True, env=ENV)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: unknown key(s) 'concurency'; known: ") and "concurrency" in lines[0]


def test_help_shows_the_field_docstrings(dg, capsys):
    assert dg("generate", "--help") == 0
    out = capsys.readouterr().out
    assert "map our field names (id, premise, hypothesis, label)" in out  # GenerateConfig.columns
    assert "rows to process (required)" in out  # inherited from ApiStageConfig
    assert "model name sent to the API" in out
    assert dg("run", "--help") == 0
    out = capsys.readouterr().out
    assert "GBP for the whole pipeline" in out and "--generate.max_tokens" in out and "--build.out_dir" in out
    assert dg("--help") == 0
    out = capsys.readouterr().out
    assert all(f"    {name}  " in out for name in ("generate", "reflect", "score", "build", "run"))


@pytest.mark.parametrize(
    ("command", "cls", "path", "flag", "key"),
    [
        ("generate", GenerateConfig, CONFIGS / "generate.yaml", "--max-tokens", "max_tokens"),
        ("build", BuildConfig, CONFIGS / "build.yaml", "--val_fraction", "val_fraction"),
        ("run", PipelineConfig, CONFIGS / "pipeline.yaml", "--reflect.max-tokens", "reflect.max_tokens"),
    ],
)
def test_print_config_round_trips(dg, capsys, tmp_path, command, cls, path, flag, key):
    value = "0.25" if key == "val_fraction" else "77"
    assert dg(command, "--config", path, flag, value, "--print_config") == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(cls, printed, {}) == load_config(cls, path, {key: yaml.safe_load(value)})
    assert dg(command, "--config", printed, "--print_config") == 0
    assert capsys.readouterr().out == printed.read_text()  # printing a printed config changes nothing


@pytest.mark.parametrize(
    ("command", "text", "named"),
    [
        ("generate", "input: a.csv\noutput: o.jsonl\nconcurency: 4\n", "unknown key(s) 'concurency'"),
        ("generate", "input: a.csv\noutput: o.jsonl\napi_key: sk-live-123\n", "api_key is read from the environment only"),
        ("run", "generate: {input: a.csv, output: o.jsonl, max_token: 3}\n", "generate: unknown key(s) 'max_token'"),
        ("run", "reflect: {api_key: sk-live-123}\n", "reflect: api_key is read from the environment only"),
        ("run", "generat: {input: a.csv}\n", "unknown key(s) 'generat'"),
    ],
)
def test_a_bad_key_is_one_error_line_exit_2(cli, tmp_path, command, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc, err = cli(command, "--config", path)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and named in lines[0], err
    assert "sk-live-123" not in err


def test_unknown_flags_and_bad_values_are_one_error_line(cli):
    for argv, named in [
        (["generate", "--concurency", "4"], "unknown flag(s) --concurency"),
        (["generate", "--api_key_e", "X"], "unknown flag(s) --api_key_e"),  # no abbreviations of api_key_env
        (["generate", "--seed", "x"], "--seed: expected int, got 'x'"),
        (["run", "--generate.temperature", "hot"], "--generate.temperature: expected float, got 'hot'"),
        (["build", "--balance", "maybe"], "--balance: expected bool, got 'maybe'"),
        (["generate", "--max-tokens", "abc"], "error: --max-tokens: expected int, got 'abc'"),  # the flag as typed
        (["run", "--reflect.max-tokens=abc"], "error: --reflect.max-tokens: expected int"),
    ]:
        rc, err = cli(*argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err


@pytest.mark.parametrize("argv", [["generate", "--api_key", "sk-live-123"], ["generate", "--api-key=sk-live-123"],
                                  ["run", "--reflect.api_key", "sk-live-123"], ["generate", "--apikey", "sk-live-123"]])
def test_a_key_given_as_a_flag_is_refused_and_never_echoed(cli, argv):
    rc, err = cli(*argv)
    assert rc == 2 and err.startswith("error: ") and "sk-live-123" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max-tokens", "5"], {"max_tokens": 5}),
        (["--max_tokens", "5"], {"max_tokens": 5}),
        (["--max-tokens=5"], {"max_tokens": 5}),
        (["--batch"], {"batch": True}),
        (["--batch", "--no-batch"], {"batch": False}),
        (["--batch", "true", "--no_retry_failed"], {"batch": True, "retry_failed": False}),
        (["--dry-run", "--quiet"], {"dry_run": True, "quiet": True}),
        (["--budget", "3", "--budget", "null"], {"budget": None}),
        (["--requests-per-second", "null", "--seed", "null"], {"requests_per_second": None, "seed": None}),
        (["--columns", "{label: gold, id: pair_id}"], {"columns": {"label": "gold", "id": "pair_id"}}),
    ],
)
def test_todays_flag_spellings_still_work(argv, expected):
    config, _ = parse_config(GenerateConfig, ["--input", "a.csv", "--output", "o.jsonl", *argv])
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.input == Path("a.csv")


def test_nested_flags_of_run_are_dotted():
    path = CONFIGS / "pipeline.yaml"
    config, verbose = parse_config(
        PipelineConfig, ["--config", str(path), "--generate.no-batch", "--reflect.batch", "--generate.max-tokens", "9", "-v"]
    )
    assert (config.generate.batch, config.reflect.batch, config.generate.max_tokens, verbose) == (False, True, 9, True)
    assert config.reflect.input == config.generate.output == config.build.thoughts  # the links are filled in
    assert config.build.reflected == config.reflect.output and config.score is None


def test_the_server_url_environment_variable_reaches_every_stage_and_a_flag_beats_it(monkeypatch):
    monkeypatch.setenv("MISTRAL_SERVER_URL", "http://127.0.0.1:1234")
    config = load_config(PipelineConfig, CONFIGS / "pipeline.yaml", {"reflect.server_url": "http://flag"})
    assert (config.generate.server_url, config.reflect.server_url) == ("http://127.0.0.1:1234", "http://flag")


def test_the_shipped_pipeline_yaml_loads_and_starts_with_its_launch_command():
    path = CONFIGS / "pipeline.yaml"
    assert path.read_text().splitlines()[0] == "# python -m data_gen run --config configs/data_gen/pipeline.yaml"
    config = load_config(PipelineConfig, path, {})  # check() refuses a stage whose model has no price
    assert [name for name, _, _ in config.api_stages()] == ["generate", "reflect"] and config.budget is not None


def test_every_problem_of_every_stage_is_refused_before_the_first_stage_runs(cli, tmp_path):
    path = tmp_path / "p.yaml"
    (tmp_path / "a.csv").write_text("id,premise,hypothesis,label\nr0,A dog runs.,An animal moves.,1\n")
    path.write_text(f"generate: {{input: {tmp_path / 'a.csv'}, output: {tmp_path / 't.jsonl'}, prices: {CONFIGS / 'prices.yaml'}}}\n"
                    f"reflect: {{output: r.jsonl, prices: {CONFIGS / 'prices.yaml'}, concurrency: 0}}\n"
                    "score: {output: s.jsonl, prices: {m: {input_per_million: 1, output_per_million: 1}}}\n"
                    "build: {out_dir: corpus, val_fraction: 2}\n")
    rc, err = cli("run", "--config", path)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    for problem in ("reflect: concurrency must be > 0", "score: no price for model 'mistral-small-latest'",
                    "score: no price for model 'open-mistral-nemo'", "build: val_fraction and test_fraction"):
        assert problem in lines[0]
    assert not (tmp_path / "t.jsonl").exists()


def test_a_pipeline_link_that_contradicts_the_stage_before_is_refused(cli, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("generate: {input: a.csv, output: t.jsonl, prices: p.yaml}\n"
                    "reflect: {input: other.jsonl, output: r.jsonl}\nbuild: {out_dir: corpus}\n")
    rc, err = cli("run", "--config", path)
    assert rc == 2 and "reflect.input is other.jsonl but the pipeline feeds it t.jsonl" in err


def test_the_fake_api_is_not_part_of_the_installed_package(tmp_path):
    probe = (
        "import pathlib, sys\n"
        "import data_gen\n"
        "from data_gen.cli import main\n"
        "assert main(['generate', '--help']) == 0\n"
        "assert not list(pathlib.Path(data_gen.__file__).parent.rglob('fake*')), 'a test double in the package'\n"
        "print(sorted(m for m in sys.modules if 'fake' in m or m.split('.')[0] == 'tests'))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_synth_is_a_subcommand_writing_what_its_python_api_writes(dg, capsys, tmp_path):
    from nlicot.offline import synthetic_task as synth

    assert dg("synth", "--help") == 0
    assert "--train_size" in capsys.readouterr().out
    argv = ["--train-size", "40", "--val-size", "8", "--test-size", "8", "--phenomena", "[negation, number]"]
    assert dg("synth", "--out-dir", tmp_path / "cli", *argv) == 0
    cfg = synth.SynthConfig(out_dir=tmp_path / "api", train_size=40, val_size=8, test_size=8, phenomena=["negation", "number"])
    assert synth.run(cfg) == 0
    for split in ("train", "val", "test"):
        assert (tmp_path / "cli" / f"{split}.jsonl").read_bytes() == (tmp_path / "api" / f"{split}.jsonl").read_bytes()


def test_field_docstrings_are_read_for_our_parsers_only(dg, capsys):
    """jsonargparse's attribute-docstring setting is process-wide; left on, it slows down every other parser in the
    process (LightningCLI's ~6x), so data_gen turns it on only while it builds and uses its own."""
    from dataclasses import dataclass

    from jsonargparse import ArgumentParser

    @dataclass
    class Other:
        size: int = 1
        """a field docstring only the attribute setting reads"""

    assert dg("generate", "--help") == 0 and "rows to process (required)" in capsys.readouterr().out
    parser = ArgumentParser()
    parser.add_class_arguments(Other)
    assert "a field docstring only the attribute setting reads" not in parser.format_help()


def test_a_nested_help_names_the_command_it_belongs_to(dg, capsys):
    assert dg("run", "--score.help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m data_gen run [--score.input INPUT]") and "__main__.py" not in out
