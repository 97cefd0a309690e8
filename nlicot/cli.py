"""``python -m nlicot {fit,validate,test,predict} --config configs/….yaml``: LightningCLI with nlicot's defaults.

What this adds to plain LightningCLI, and why:
* data and model share one tokenizer and one packing switch (linked arguments, not two settings to keep equal);
* checkpoints go to a fixed ``checkpoint.dirpath`` so ``--ckpt_path last`` finds them after a crash, written
  atomically, every ``checkpoint.every_n_train_steps`` optimizer steps, with a PEFT adapter folder beside them;
* a fresh ``fit`` refuses to overwrite an earlier run's checkpoints, and ``--ckpt_path last`` with nothing to
  resume is an error, not a silent restart from scratch;
* known input / setup errors print one ``error:`` line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from nlicot.callbacks import DataReport, GenerationEval, ThroughputLog, TrainingRNG
from nlicot.checkpointing import AdapterExport, AtomicCheckpointIO
from nlicot.corpus import CorpusError
from nlicot.data import NLICoTDataModule
from nlicot.evaluation import PredictionWriter
from nlicot.grpo import GRPOSettingsError
from nlicot.model import NLICoTModule, NonFiniteLossError, PackingIsolationError
from nlicot.packing import ResumeMismatchError
from nlicot.prompt import TemplateTokenError

#: Model arguments a checkpoint fixes: its adapter only fits this base and this LoRA shape.
ARCHITECTURE_KEYS = ("model_name_or_path", "quantization", "double_quant", "lora_r", "lora_alpha", "target_modules")


class UsageError(RuntimeError):
    """A command that would lose work or do nothing; the message says what to do instead."""


class NLICoTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Subclass mode (model.class_path / data.class_path, e.g. nlicot.grpo.*): links address init_args.
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        parser.link_arguments("data.init_args.packing", "model.init_args.packing")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(GenerationEval, "generation_eval")
        parser.set_defaults(
            {
                "checkpoint.dirpath": "lightning_logs/nlicot/checkpoints",
                "checkpoint.filename": "step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.every_n_train_steps": 50,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "nlicot", "default_hp_metric": False},
                },
            }
        )

    def _parse_ckpt_path(self) -> None:
        """From a checkpoint take what defines the trained model; keep everything else from the command line.

        Plain LightningCLI replaces *all* model arguments by the checkpoint's, silently discarding flags such as
        ``--model.max_new_tokens`` at predict time or ``--model.rewarm_on_extend`` on resume.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        saved = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        keep = {k: saved[k] for k in ARCHITECTURE_KEYS if k in saved}
        if keep:
            self.config = self.parser.parse_object({subcommand: {"model": {"init_args": keep}}}, self.config)

    def instantiate_trainer(self, **kwargs):
        """Every run writes checkpoints atomically and exports the adapter, next to what the config adds."""
        config = self._get(self.config_init, "trainer", default={})
        kwargs["plugins"] = [*_as_list(config.get("plugins")), AtomicCheckpointIO()]
        callbacks = [*_as_list(config.get("callbacks")), AdapterExport(), TrainingRNG(), ThroughputLog(), DataReport()]
        if config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        ckpt_dir = Path(self.config_init[self.subcommand]["checkpoint"].dirpath)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        existing = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
        if ckpt_path is None and existing:
            raise UsageError(
                f"{ckpt_dir} already holds checkpoints of an earlier run ({existing[-1].name}, …). "
                "Resume it with --ckpt_path last, or start a new run with another --checkpoint.dirpath."
            )
        if ckpt_path == "last" and not (ckpt_dir / "last.ckpt").is_file():
            raise UsageError(f"--ckpt_path last: there is no {ckpt_dir / 'last.ckpt'} to resume from")


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        NLICoTCLI(
            NLICoTModule,
            NLICoTDataModule,
            args=args,
            subclass_mode_model=True,  # configs without class_path get NLICoTModule / NLICoTDataModule
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "log_every_n_steps": 1,
                "use_distributed_sampler": False,  # our sampler shards by rank and knows accumulation
            },
        )
    except (CorpusError, PackingIsolationError, NonFiniteLossError, ResumeMismatchError, UsageError,
            TemplateTokenError, GRPOSettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2 if not isinstance(e, NonFiniteLossError) else 1) from None
