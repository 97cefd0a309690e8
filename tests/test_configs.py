"""Every trainer config parses (alone or as an overlay on best.yaml) and says what the issue promises."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from jsonargparse import dict_to_namespace

from nlicot.cli import main, place_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def resolved(*configs: str) -> dict:
    args = ["fit"]
    for c in configs:
        args += ["--config", str(REPO / "configs" / c)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code in (0, None)
    config = dict_to_namespace(yaml.safe_load(out.getvalue()))
    place_run(config)  # the output paths the CLI derives before it builds anything
    cfg = config.as_dict()
    for group in ("model", "data"):  # subclass mode: the class's arguments sit under init_args
        cfg[group] = cfg[group]["init_args"] | {"class_path": cfg[group]["class_path"]}
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_and_starts_with_its_command(name):
    first = (REPO / "configs" / name).read_text().splitlines()[0]
    assert first.startswith("# python -m nlicot fit --config configs/")
    stack = [name] if not name.startswith(("ablation", "ddp")) else ["best.yaml", name]
    cfg = resolved(*stack)
    assert cfg["model"]["model_name_or_path"]


def test_best_is_the_seed_setup():
    cfg = resolved("best.yaml")
    m, d, t = cfg["model"], cfg["data"], cfg["trainer"]
    assert (m["lora"]["r"], m["lora"]["alpha"], m["lora"]["dropout"]) == (32, 64, 0.05)
    assert m["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert d["micro_batch_size"] * t["accumulate_grad_batches"] == 64
    assert (t["gradient_clip_val"], m["optim"]["learning_rate"], m["schedule"]["warmup_steps"]) == (1.0, 1e-4, 150)
    assert (d["max_length"], m["quantization"], m["double_quant"], m["compute_dtype"]) == (512, "nf4", True, "bfloat16")
    assert m["gradient_checkpointing"] and m["optim"]["name"] == "auto" and t["precision"] == "bf16-mixed"
    assert cfg["generation_eval"]["rows"] == 200 and "generation_eval" not in m  # the callback's key, not the model's


@pytest.mark.parametrize("name, r, batch", [("ablation0.yaml", 16, 16), ("ablation1.yaml", 16, 32),
                                             ("ablation2.yaml", 32, 64)])
def test_ablations_are_small_overlays(name, r, batch):
    cfg = resolved("best.yaml", name)
    assert cfg["model"]["lora"]["r"] == r and cfg["model"]["lora"]["alpha"] == 2 * r
    assert cfg["data"]["micro_batch_size"] * cfg["trainer"]["accumulate_grad_batches"] == batch
    assert cfg["checkpoint"]["dirpath"] != resolved("best.yaml")["checkpoint"]["dirpath"]
    assert len((REPO / "configs" / name).read_text().splitlines()) < 25


@pytest.mark.parametrize("overlay, devices", [("ddp_2gpu.yaml", 2), ("ddp_4gpu.yaml", 4)])
def test_ddp_overlays_keep_the_effective_batch_of_best(overlay, devices):
    best, ddp = resolved("best.yaml"), resolved("best.yaml", overlay)
    effective = {name: c["data"]["micro_batch_size"] * c["trainer"]["accumulate_grad_batches"] * c["trainer"]["devices"]
                 for name, c in (("best", best), ("ddp", ddp))}
    assert effective == {"best": 64, "ddp": 64}
    assert ddp["trainer"]["strategy"] == "ddp" and ddp["trainer"]["devices"] == devices
    assert ddp["data"]["micro_batch_size"] == best["data"]["micro_batch_size"]  # same per-GPU memory as best.yaml
    assert ddp["checkpoint"]["dirpath"] != best["checkpoint"]["dirpath"]  # never resumes a 1-GPU run's position
    first = (REPO / "configs" / overlay).read_text().splitlines()[0]
    assert first == f"# python -m nlicot fit --config configs/best.yaml --config configs/{overlay}"


def test_one_flag_moves_the_whole_run(tmp_path):
    """checkpoints, TensorBoard and predictions follow --trainer.default_root_dir unless set one by one."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/demo.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--print_config"])
    config = dict_to_namespace(yaml.safe_load(out.getvalue()))
    place_run(config)
    assert config.checkpoint.dirpath == str(tmp_path / "demo" / "checkpoints")
    assert config.trainer.logger.init_args.save_dir == str(tmp_path)
    assert config.predictions.output_dir == str(tmp_path / "demo" / "predictions")
    assert resolved("demo.yaml")["checkpoint"]["dirpath"] == "lightning_logs/demo/checkpoints"  # the default place


def test_a_flat_key_of_the_previous_release_is_one_error_line_naming_its_new_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--model.learning_rate=1e-3", "--print_config"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert done.value.code == 2
    assert errors == ['error: Parser key "model.learning_rate": renamed to model.optim.learning_rate'], errors
