"""Preemption loses nothing: on SIGTERM, SIGINT or SIGUSR1 save at the last completed optimizer step and stop.

Spot instances, ``docker stop``, Kubernetes and SLURM end a job with a signal and a grace period before SIGKILL.
Lightning 2.6 stops on SIGTERM at the end of the current *micro-batch* (possibly mid-accumulation) and saves only
under SLURM's auto-requeue, so a stopped run resumes from its last periodic checkpoint. :class:`Preemption`
(registered by the CLI) instead writes ``<checkpoint dir>/last.ckpt`` holding exactly what a periodic checkpoint
at that step holds (adapter, optimizer, scheduler, loop counters, sampler position, training RNG), atomically,
then ends ``fit`` with :class:`Preempted` (the CLI exits 143). Where the signal lands decides when:

* during an optimizer step (forward / backward of any micro-batch of its accumulation window): the step is
  finished, then saved;
* during validation or generation eval (the hooks of validation): nothing of training changes there, so the run
  stops at once and saves the state of the last step with validation marked as started and not done: the resumed
  run replays that whole validation (Lightning's mid-evaluation restart), then trains on as the unbroken run did;
* between steps (logging, a periodic save, fetching the next batch): the next step is finished, then saved;
* when a step ends and validation is due after it, the run stops as validation starts (as above), so the
  resumed run validates where the unbroken one did.

A second signal while saving is logged and ignored; the write is atomic anyway (``AtomicCheckpointIO``), so a
SIGKILL at the end of the grace period leaves the previous ``last.ckpt`` whole. With ``grace_period`` set, a save
that would take longer than the time left (estimated from the last checkpoint write) is not started, and the log
says so. Under DDP the ranks agree at every step's end (one all-reduce of a flag) so that all of them save and
stop at the same step; rank 0 forwards the signal to the ranks it launched.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: Signals that mean "you are about to be killed": docker / Kubernetes / spot (TERM), Ctrl-C (INT), SLURM's
#: ``--signal=USR1@<seconds>`` warning.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(SIGTERMException):
    """Ends ``fit`` after a preemption save (or after deciding not to save); the CLI exits 143."""


class Preemption(L.Callback):
    """Save at the last completed optimizer step on SIGTERM / SIGINT / SIGUSR1, then stop (see the module doc)."""

    def __init__(self, grace_period: float | None = None) -> None:
        """
        Args:
            grace_period: seconds from the signal to the SIGKILL that follows it, if known (``docker stop``: 10,
                Kubernetes: 30, SLURM: the lead time of ``--signal``). A save expected to outlast it is skipped and
                logged, keeping the previous checkpoint the newest. None: always save (an interrupted save still
                leaves the previous checkpoint whole).
        """
        self.grace_period = grace_period
        self._signal: int | None = None
        self._signal_time = 0.0
        self._phase = "setup"  # "step" | "between" | "validation" | "stopping" | "saving"
        self._stop_at_validation = False

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After Lightning's signal connector (it stops mid-accumulation and would compose with ours): replace it.
        Lightning's teardown puts back the handlers from before the run."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            signal.signal(signum, lambda s, f: self._on_signal(trainer, s, f))

    def _on_signal(self, trainer: L.Trainer, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._phase in ("saving", "stopping"):
            log.warning("%s while stopping: ignored, the checkpoint write goes on", name)
            return
        if self._signal is not None:
            log.warning("%s again: already stopping", name)
        else:
            self._signal, self._signal_time = signum, time.monotonic()
            launcher = trainer.strategy.launcher
            if getattr(launcher, "procs", None):  # the local ranks this process started (Lightning's launcher)
                launcher.kill(signum)
            step = trainer.global_step
            log.warning(f"{name} in validation: saving the state of optimizer step {step}, then stopping"
                        if self._phase == "validation" else
                        f"{name} in training: finishing optimizer step {step + 1}, then saving and stopping")
        if self._phase == "validation":  # nothing of training is changing: stop now, replay validation on resume
            self._phase = "stopping"
            raise Preempted(f"stopped by {name}")

    # ------------------------------------------------------------------ where to stop
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._phase = "step"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """At the end of an optimizer step (runs after TrainingRNG's hook and before ModelCheckpoint's, which
        Lightning moves last: the state saved here is the state a periodic checkpoint of this step holds)."""
        loop = trainer.fit_loop.epoch_loop
        if loop._should_accumulate():
            return
        self._phase = "between"
        if not trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False):
            return
        if self._validation_due(trainer):
            self._stop_at_validation = True
            return
        self._phase = "saving"
        self._save(trainer, mid_validation=False)
        raise Preempted(f"stopped by {self._signal_name()}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._phase = "validation"
        if self._stop_at_validation or self._signal is not None:
            self._phase = "stopping"
            raise Preempted(f"stopped by {self._signal_name()}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._phase = "between"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A stop raised in validation (by the signal handler or at its start) saves here, before teardown."""
        if isinstance(exception, Preempted) and self._phase == "stopping":
            self._phase = "saving"
            self._save(trainer, mid_validation=True)

    # ------------------------------------------------------------------ saving
    def _signal_name(self) -> str:
        return signal.Signals(self._signal).name if self._signal is not None else "a signal on another rank"

    @staticmethod
    def _validation_due(trainer: L.Trainer) -> bool:
        """Whether Lightning validates after the step that just ended (the same test its loop makes next)."""
        loop = trainer.fit_loop.epoch_loop
        if not loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return False
        loop.val_loop.setup_data()  # what the validation run would do first: it tells whether there is data
        return not loop.val_loop.skip

    def _save(self, trainer: L.Trainer, mid_validation: bool) -> None:
        callback = trainer.checkpoint_callback
        if callback is None or not callback.dirpath:
            log.warning("no checkpoint callback: stopping at optimizer step %d without saving", trainer.global_step)
            return
        path = Path(callback.dirpath) / "last.ckpt"
        need = getattr(trainer.strategy.checkpoint_io, "last_save_seconds", None)
        if self.grace_period is not None and need is not None:
            left = self.grace_period - (time.monotonic() - self._signal_time)
            if need > left:
                log.warning("the grace period is too short to save: %.1f s left of %.1f, the last checkpoint write "
                            "took %.2f s. Not saving: %s stays at the last periodic checkpoint (step %d)",
                            left, self.grace_period, need, path, callback._last_global_step_saved)
                return
        start = time.monotonic()
        if mid_validation:
            # Each rank left validation on its own signal: no collective (Trainer.save_checkpoint has a barrier).
            if trainer.is_global_zero:
                checkpoint = trainer._checkpoint_connector.dump_checkpoint()
                restart_validation(checkpoint)
                trainer.strategy.save_checkpoint(checkpoint, path)
        else:
            trainer.save_checkpoint(path)
        log.warning("saved %s at optimizer step %d in %.1f s%s", path, trainer.global_step, time.monotonic() - start,
                    " (validation of this step replays on resume)" if mid_validation else "")


def restart_validation(checkpoint: dict[str, Any]) -> None:
    """Mark the running validation of a checkpoint dumped mid-validation as started and not done, from its first
    batch: ``--ckpt_path`` then resumes through Lightning's mid-evaluation restart, which runs the whole validation
    again (fresh metrics) before the next training batch, at the same logging step as the unbroken run. The
    training counters are already right: validation runs after the step's batch is counted complete."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    total, current = progress["total"], progress["current"]
    before = total["completed"] - current["completed"]  # batches of earlier validations
    total.update(ready=before + 1, started=before + 1, processed=before, completed=before)
    current.update(ready=1, started=1, processed=0, completed=0)
    progress["is_last_batch"] = False
