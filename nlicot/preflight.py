"""Checks a run's setup can pass before anything slow is loaded: the accelerator, the corpus files, the model.

Why: without them ``python -m nlicot fit --config configs/best.yaml`` on a machine without a GPU ends in Lightning's
``MisconfigurationException`` traceback, and without a network in transformers' ``OSError`` traceback after the
data is tokenized. Each check here is one :class:`PreflightError` (one ``error:`` line from the CLI) that names the
setting and what to do, in the order a user meets them. They read the parsed config only, and the model check
costs at most one short connection attempt (:data:`PROBE_TIMEOUT_S`).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: Seconds the hub connectivity probe may take (a hub download has no such bound: it retries for minutes).
PROBE_TIMEOUT_S = 3.0
#: The data splits each subcommand reads (one it cannot do without is checked by the data module itself).
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
#: Suffixes :func:`nlicot.corpus.load_rows` reads as files (anything else is a `datasets` folder or name).
FILE_SUFFIXES = (".jsonl", ".json", ".csv")
MAKE_CORPUS = "python -m data_gen run --config configs/data_gen/pipeline.yaml"


class PreflightError(RuntimeError):
    """A setup problem found before the run starts; the message says which setting and what to do."""


def check(subcommand: str, config: Any) -> None:
    """Run the three checks on a subcommand's parsed config (LightningCLI's namespace), first failure raised."""
    check_accelerator(config.trainer.get("accelerator"), config.trainer.get("devices"))
    data = config.data.get("init_args") or config.data
    check_corpus({split: data.get(f"{split}_path") for split in STAGE_SPLITS.get(subcommand, ())})
    model = config.model.get("init_args") or config.model
    check_model(model.get("model_name_or_path"))


def check_accelerator(accelerator: Any, devices: Any) -> None:
    """``gpu``/``cuda`` needs a visible CUDA device (as many as ``devices`` asks for), ``mps`` an Apple GPU."""
    if not isinstance(accelerator, str):
        return  # an Accelerator object or class_path: Lightning checks it
    import torch

    name = accelerator.lower()
    cpu = ("run on the CPU with --trainer.accelerator cpu --trainer.precision 32-true --model.compute_dtype float32 "
           "(slow for a 7B model; configs/demo.yaml and configs/smollm2.yaml are sized for a CPU)")
    if name in ("gpu", "cuda"):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found == 0:
            raise PreflightError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU "
                                 f"(torch {torch.__version__} sees none): {cpu}")
        if isinstance(devices, int) and devices > found:
            raise PreflightError(f"trainer.devices={devices} but only {found} CUDA GPU(s) are visible: set "
                                 f"--trainer.devices {found} (or -1 for all)")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise PreflightError(f"trainer.accelerator=mps but this machine has no Apple GPU: {cpu}")


def check_corpus(sources: dict[str, str | None]) -> None:
    """Every corpus *file* the stage reads exists (all missing ones named at once)."""
    missing = [f"data.{split}_path={source}" for split, source in sources.items()
               if source and Path(source).suffix in FILE_SUFFIXES and not Path(source).is_file()]
    if missing:
        raise PreflightError(
            f"corpus file(s) not found: {', '.join(missing)}. The data pipeline writes corpus/{{train,val,test}}.jsonl: "
            f"{MAKE_CORPUS} (needs MISTRAL_API_KEY); or point the flags at your files "
            "(offline: --data.train_path data/synth/train.jsonl, written by python -m data_gen synth)"
        )


def check_model(name: str | None) -> None:
    """The base model can be loaded: an offline name, a GGUF file, a folder with ``config.json``, or a hub id that
    is cached or reachable (and not gated for this user)."""
    from nlicot import gguf
    from nlicot.hub import UnknownModelError, check_offline_name, offline_models

    if not name or name in offline_models():
        return
    try:
        check_offline_name(name)
    except UnknownModelError as e:
        raise PreflightError(str(e)) from None
    if gguf.is_gguf(name):
        try:
            gguf.gguf_file(name)
        except gguf.GGUFError as e:
            raise PreflightError(f"model.model_name_or_path={e}") from None
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PreflightError(f"model.model_name_or_path={name}: the folder has no config.json (not a saved model)")
        return
    if name.startswith(("/", "./", "../", "~")) or path.exists():
        raise PreflightError(f"model.model_name_or_path={name}: no such folder")
    _check_hub_model(name)


def _check_hub_model(repo_id: str) -> None:
    from huggingface_hub import auth_check, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    local = "or give a local copy with --model.model_name_or_path /local/folder"
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:
        raise PreflightError(f"model.model_name_or_path={repo_id}: neither a folder nor a hub id (org/name)") from None
    if isinstance(cached, str):
        return  # transformers falls back to the cache when the hub cannot be reached
    if constants.HF_HUB_OFFLINE:
        raise PreflightError(f"model.model_name_or_path={repo_id} is not in the local Hugging Face cache and "
                             f"HF_HUB_OFFLINE is set: download it on a connected machine, {local}")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise PreflightError(f"model.model_name_or_path={repo_id}: cannot reach {constants.ENDPOINT} ({e}) and the "
                             f"model is not in the local cache: connect this machine, {local}") from None
    try:
        auth_check(repo_id)  # the saved login or HF_TOKEN, as the download would use
    except GatedRepoError:
        raise PreflightError(f"model.model_name_or_path={repo_id} is gated: accept its terms on the hub, then log in "
                             f"with huggingface-cli login (or set HF_TOKEN), {local}") from None
    except RepositoryNotFoundError:
        raise PreflightError(f"model.model_name_or_path={repo_id}: no such model on the hub (or it is private: "
                             f"huggingface-cli login), {local}") from None
    except OSError:  # transport errors are OSErrors too (httpx)
        return  # the hub answered something else (rate limit, outage): let the download report it
