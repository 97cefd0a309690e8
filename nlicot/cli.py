"""``python -m nlicot {fit,validate,test,predict} --config configs/….yaml``: LightningCLI with nlicot's defaults.

What this adds to plain LightningCLI, and why:
* data and model share one tokenizer and one packing switch (linked arguments, not two settings to keep equal);
* one run folder: ``trainer.default_root_dir`` (default ``lightning_logs``) / the logger's name holds the
  TensorBoard versions, ``checkpoints/`` and ``predictions/`` unless ``checkpoint.dirpath``, the logger's
  ``save_dir`` or ``predictions.output_dir`` are set explicitly, so one flag moves a whole run and
  ``--ckpt_path last`` finds it again;
* checkpoints are written atomically every ``checkpoint.every_n_train_steps`` optimizer steps, with a PEFT
  adapter folder beside them;
* from a checkpoint (a file or ``last``) only the arguments that define the trained model are taken; every
  other model flag on the command line stays in force;
* a fresh ``fit`` refuses to overwrite an earlier run's checkpoints, and ``--ckpt_path last`` with nothing to
  resume is an error, not a silent restart from scratch;
* ``predict`` starts no TensorBoard version (it logs nothing); its ``config.yaml`` lands in the predictions folder;
* known input / setup errors print one ``error:`` line and exit non-zero, without a traceback (a bad flag or
  config value: jsonargparse's message without the 70-line usage in front of it); a ``fit``
  stopped by SIGTERM, SIGINT or SIGUSR1 saves at its last completed optimizer step and exits 143 (128 + 15, the
  shell's convention; ``preemption.*``, nlicot/preemption.py);
* a checkpoint resumes on another number of devices with the same rows per optimizer step (``resume.*``).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nlicot import preflight
from nlicot.attention import PackingIsolationError
from nlicot.callbacks import DataReport, GenerationEval, ThroughputLog, TrainingRNG
from nlicot.checkpointing import AdapterExport, AtomicCheckpointIO, ResumeLayout
from nlicot.corpus import CorpusError
from nlicot.data import NLICoTDataModule
from nlicot.grpo import GRPOSettingsError
from nlicot.hub import UnknownModelError
from nlicot.lora import CheckpointMismatchError, LoRAModule, NonFiniteLossError, architecture
from nlicot.packing import ResumeMismatchError
from nlicot.predictions import PredictionWriter
from nlicot.preemption import Preemption
from nlicot.preflight import PreflightError
from nlicot.prompt import TemplateTokenError
from nlicot.terse_errors import TerseErrors

#: Flat model keys of earlier releases → their key in the typed groups (nlicot/args.py, nlicot/grpo.py).
RENAMED = {
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules", "optimizer": "optim.name", "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay", "betas": "optim.betas", "warmup_steps": "schedule.warmup_steps",
    "min_lr_ratio": "schedule.min_lr_ratio", "rewarm_on_extend": "schedule.rewarm_on_extend",
    "max_new_tokens": "generation.max_new_tokens", "generation_batch_size": "generation.batch_size",
    "num_samples": "generation.num_samples", "temperature": "generation.temperature", "top_p": "generation.top_p",
    "sample_seed": "generation.seed", "greedy_reference": "generation.greedy_reference",
    **{k: f"grpo.{k}" for k in ("num_generations", "clip_epsilon", "kl_coef", "kl_reference", "reward_correct",
                                "reward_format", "reward_brevity", "brevity_free_tokens")},
}
#: Where runs go when ``trainer.default_root_dir`` is not given.
DEFAULT_ROOT = "lightning_logs"
#: Exit status of a run stopped by SIGTERM (resumable with ``--ckpt_path last``).
EXIT_SIGTERM = 143


class UsageError(RuntimeError):
    """A command that would lose work or do nothing; the message says what to do instead."""


class TerseArgumentParser(TerseErrors, LightningArgumentParser):
    """LightningCLI's parser with one-line errors (see ``nlicot.terse_errors``); a flat model key of an earlier
    release names its new key (:data:`RENAMED`)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        unknown = re.findall(r"Option '([\w.]+)' is not accepted", message)
        if unknown and 'Parser key "model' in message:
            old = unknown[-1]
            why = f"renamed to model.{RENAMED[old]}" if old in RENAMED else "no such key (--help lists them)"
            message = f'Parser key "model.{old}": {why}'
        super().error(message, ex)


class NLICoTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Subclass mode (model.class_path / data.class_path, e.g. nlicot.grpo.*): links address init_args.
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        parser.link_arguments("data.init_args.packing", "model.init_args.packing")
        parser.set_defaults({"model": {"class_path": "nlicot.sft.NLICoTModule"}})  # SFT unless a config says
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(GenerationEval, "generation_eval")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(ResumeLayout, "resume")
        parser.set_defaults(
            {
                "checkpoint.dirpath": None,  # <run folder>/checkpoints, see place_run
                "checkpoint.filename": "step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.every_n_train_steps": 50,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "predictions.output_dir": None,  # <run folder>/predictions
                "trainer.default_root_dir": DEFAULT_ROOT,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    # save_dir left at DEFAULT_ROOT follows trainer.default_root_dir (see place_run)
                    "init_args": {"save_dir": DEFAULT_ROOT, "name": "nlicot", "default_hp_metric": False},
                },
            }
        )

    def parse_arguments(self, parser, args) -> None:
        """Keep the command line's model arguments: LightningCLI replaces all of them by a checkpoint file's,
        silently discarding flags such as ``--model.max_new_tokens`` at predict time."""
        super().parse_arguments(parser, args)
        self.requested = self.config.clone()

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        config = self.config[subcommand]
        place_run(config)
        if subcommand == "predict":  # it logs nothing; its config.yaml goes beside the predictions it explains
            config.trainer.logger = False
            config.trainer.default_root_dir = config.predictions.output_dir
        config.model = self.requested[subcommand].model.clone()
        ckpt = checkpoint_file(config)
        if ckpt is not None:
            saved = torch.load(ckpt, weights_only=True, map_location="cpu").get("hyper_parameters", {})
            # Set in place: parse_object on a subclass-mode group without class_path resets its other init_args.
            for key, value in architecture(saved).items():
                config.model.init_args[key] = value
        preflight.check(subcommand, config)  # accelerator, corpus files, model reachable: one error line, nothing loaded

    def instantiate_trainer(self, **kwargs: Any):
        """Every run writes checkpoints atomically and exports the adapter, next to what the config adds."""
        config = self.config_init[self.subcommand]["trainer"]
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
                "Resume it with --ckpt_path last, or start a new run with another --trainer.default_root_dir."
            )
        if ckpt_path == "last" and not (ckpt_dir / "last.ckpt").is_file():
            raise UsageError(f"--ckpt_path last: there is no {ckpt_dir / 'last.ckpt'} to resume from")


def place_run(config: Namespace) -> None:
    """Fill the unset output paths from ``trainer.default_root_dir`` and the logger's name (the run folder).

    The logger's ``save_dir`` must be a path for the config to validate, so its default ``lightning_logs`` is
    read as "not set" (a TensorBoard ``save_dir`` elsewhere is kept as given).
    """
    root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
    logger = config.trainer.get("logger")
    args = logger.get("init_args") if isinstance(logger, Namespace) else None
    name = None
    if args is not None:
        if args.get("save_dir") in (None, DEFAULT_ROOT):
            args.save_dir = str(root)
        name = args.get("name")
    run = root / name if name else root
    if config.checkpoint.dirpath is None:
        config.checkpoint.dirpath = str(run / "checkpoints")
    if config.predictions.output_dir is None:
        config.predictions.output_dir = str(run / "predictions")


def checkpoint_file(config: Namespace) -> Path | None:
    """The file ``ckpt_path`` names (``last`` = the run folder's ``last.ckpt``), or None if there is none."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path:
        return None
    path = Path(config.checkpoint.dirpath) / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    return path if path.is_file() else None


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The typed groups' field docstrings (nlicot/args.py) are their --help; jsonargparse reads them when asked.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        NLICoTCLI(
            LoRAModule,
            NLICoTDataModule,
            args=args,
            parser_class=TerseArgumentParser,
            parser_kwargs={"prog": "python -m nlicot"},
            subclass_mode_model=True,  # any recipe on LoRAModule; without class_path: NLICoTModule (SFT)
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "log_every_n_steps": 1,
                "use_distributed_sampler": False,  # our sampler shards by rank and knows accumulation
            },
        )
    except SIGTERMException as e:  # nlicot.preemption.Preempted, or Lightning's own before training started
        print(f"error: {e or 'stopped by SIGTERM'}; resume with --ckpt_path last", file=sys.stderr)
        raise SystemExit(EXIT_SIGTERM) from None
    except (CorpusError, CheckpointMismatchError, PackingIsolationError, NonFiniteLossError, ResumeMismatchError,
            UsageError, TemplateTokenError, UnknownModelError, GRPOSettingsError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2 if not isinstance(e, NonFiniteLossError) else 1) from None
