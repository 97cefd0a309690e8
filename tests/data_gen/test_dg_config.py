"""Stage configs: every shipped YAML loads, unknown or mistyped keys are refused by name, flags override YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_gen.cli import COMMANDS
from data_gen.config import ApiStageConfig, Price, load_config
from data_gen.errors import ConfigError
from data_gen.stages.generate import GenerateConfig
from data_gen.store import sidecar

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data_gen"
STAGE_YAMLS = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem not in ("prices", "pipeline"))
STAGES = [name for name in COMMANDS if name.startswith(("generate", "reflect", "score", "build"))]


def test_there_is_a_yaml_for_every_stage():
    assert {p.stem for p in STAGE_YAMLS} == set(STAGES)


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: p.stem)
def test_every_stage_yaml_loads_and_starts_with_its_launch_command(path):
    config = load_config(COMMANDS[path.stem][0], path, {})
    first = path.read_text().splitlines()[0]
    assert first == f"# python -m data_gen {path.stem} --config configs/data_gen/{path.name}"
    if isinstance(config, ApiStageConfig):
        table = config.price_table()
        models = {config.model, getattr(config, "improve_model", config.model)}
        assert models <= set(table)  # every model a shipped config calls has a price


def test_the_price_table_prices_in_gbp_with_a_batch_discount():
    table = ApiStageConfig(prices=CONFIGS / "prices.yaml").price_table()
    assert all(isinstance(p, Price) and 0 < p.batch_discount < 1 for p in table.values())
    price = Price(input_per_million=0.2, output_per_million=0.6, batch_discount=0.5)
    assert price.cost(1_000_000, 500_000) == pytest.approx(0.5)
    assert price.cost(1_000_000, 500_000, batch=True) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("concurency: 4\n", "unknown key(s) 'concurency'"),
        ("concurrency: four\n", "concurrency: expected int, got 'four'"),
        ("dry_run: 1\n", "dry_run: expected bool"),
        ("api_key: sk-123\n", "api_key is read from the environment only"),
        ("prices: {m: {input_per_million: 1}}\n",
         "prices: Problem with given class_path 'data_gen.config.Price': the following arguments are required: output_per_million"),
        ("prices: {m: {input_per_million: 1, output_per_million: 1, batch_discount: 2}}\n", "batch_discount must be in [0, 1)"),
        ("concurrency: 0\n", "concurrency must be > 0"),
        ("- a list\n", "expected a mapping of keys"),
        ("input: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_config_values_are_named(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text("input: rows.csv\noutput: out.jsonl\n" + yaml_text if not yaml_text.startswith("-") else yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(GenerateConfig, path, {})
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_required_keys_are_listed():
    with pytest.raises(ConfigError, match="config: missing required key 'input'; missing required key 'output'"):
        load_config(GenerateConfig, None, {})


def test_flags_override_yaml_and_the_environment_overrides_yaml(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("input: a.csv\noutput: o.jsonl\nconcurrency: 4\nserver_url: http://yaml\n")
    monkeypatch.setenv("MISTRAL_SERVER_URL", "http://env")
    config = load_config(GenerateConfig, path, {"concurrency": 32})
    assert (config.concurrency, config.server_url, config.input) == (32, "http://env", Path("a.csv"))
    assert load_config(GenerateConfig, path, {"server_url": "http://flag"}).server_url == "http://flag"


def test_cli_flag_errors_exit_2_without_traceback(dg, tmp_path, capsys):
    assert dg("generate", "--input", "x.csv", "--output", tmp_path / "o.jsonl", "--concurrency", "many") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --concurrency: expected int, got 'many'") and "Traceback" not in err
    assert dg("build", "--config", tmp_path / "missing.yaml") == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err


def test_a_model_without_a_price_is_refused_before_any_call_on_the_mistral_api(
    rows_file, dg, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-not-used-because-nothing-is-sent")  # no server_url: the Mistral API
    rc = dg("generate", "--input", rows_file(2), "--output", tmp_path / "o.jsonl", "--model", "unpriced-model",
            "--prices", Path(__file__).parents[2] / "configs" / "data_gen" / "prices.yaml", "--quiet")
    assert rc == 2 and "no price for model 'unpriced-model'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_model_without_a_price_costs_nothing_on_a_server_of_your_own(fake_api, rows_file, dg, flags, tmp_path, caplog):
    """A local server (vLLM, transformers serve) is not in the price table: free, with one warning, not an error."""
    server = fake_api()
    rc = dg("generate", "--input", rows_file(2), "--output", tmp_path / "o.jsonl", "--model", "unpriced-model", *flags(server))
    assert rc == 0 and server.counts["chat"] == 2
    warnings = [r.getMessage() for r in caplog.records if "no price for 'unpriced-model'" in r.getMessage()]
    assert len(warnings) == 1 and "counted as free" in warnings[0]
    assert json.loads(sidecar(tmp_path / "o.jsonl", "summary", ".json").read_text())["cost"]["spent_gbp"] == 0
