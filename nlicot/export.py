"""``python -m nlicot.export``: an nlicot checkpoint (or PEFT adapter folder) → a servable Hugging Face folder.

``--merge true`` (default) folds the LoRA into an *unquantized* copy of the base (bf16 by default) and writes a
plain ``AutoModelForCausalLM`` folder + tokenizer for vLLM, TGI or llama.cpp conversion. The adapter was trained
against the NF4-quantized base, so the merged model differs from the training-time model by the quantization
error of the base (the usual QLoRA trade-off); ``--merge false`` writes the adapter folder only.

Either folder serves the prompt it was trained on: its tokenizer's chat template renders one user turn exactly as
:func:`nlicot.prompt.encode_prompts` does (Mistral: the ``[INST]`` format; other models: their own template), the
generation config stops on the token the answer was trained to end with, and ``nlicot.json`` records the prompt.
A client sends ``nlicot.prompt.user_message(premise, hypothesis)`` as the one user message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nlicot import prompt
from nlicot.atomic import atomic_dir
from nlicot.checkpointing import write_adapter
from nlicot.sft import NLICoTModule


def load_module(ckpt_path: str | None, adapter_path: str | None, model_name_or_path: str | None,
                quantization: str, dtype: str) -> NLICoTModule:
    """The trained module from a checkpoint (Lightning's ``load_from_checkpoint``) or from an adapter folder."""
    if (ckpt_path is None) == (adapter_path is None):
        raise ValueError("give exactly one of --ckpt_path (nlicot checkpoint) or --adapter_path (PEFT folder)")
    overrides = {"quantization": quantization, "compute_dtype": dtype, "gradient_checkpointing": False}
    if model_name_or_path:
        overrides["model_name_or_path"] = model_name_or_path
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
        return NLICoTModule.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides).eval()
    config = Path(adapter_path) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{adapter_path}: no adapter_config.json (not a PEFT adapter folder)")
    overrides.setdefault("model_name_or_path", json.loads(config.read_text())["base_model_name_or_path"])
    module = NLICoTModule(adapter_path=adapter_path, **overrides)
    module.configure_model()
    return module.eval()


def export(
    output_dir: str,
    ckpt_path: str | None = None,
    adapter_path: str | None = None,
    model_name_or_path: str | None = None,
    merge: bool = True,
    dtype: str = "bfloat16",
) -> Path:
    """Write the merged model (or the adapter) to ``output_dir`` atomically.

    Args:
        output_dir: folder to create (must not exist).
        ckpt_path: an nlicot ``.ckpt`` (adapter + hyperparameters).
        adapter_path: or a PEFT adapter folder (e.g. ``…/checkpoints/adapter``).
        model_name_or_path: override the base model recorded in the checkpoint (e.g. a local copy).
        merge: fold the adapter into the base weights; false writes only the adapter folder.
        dtype: dtype of the merged weights (bfloat16, float16 or float32).
    """
    out = Path(output_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --output_dir")
    module = load_module(ckpt_path, adapter_path, model_name_or_path, "none" if merge else "nf4",
                         dtype if merge else "auto")
    if not merge:
        write_adapter(module, out)
        return out
    with atomic_dir(out) as tmp:
        merged = module.model.merge_and_unload()
        merged.config.use_cache = True
        # Served models stop on the generation config's EOS: make it the token the answer was trained to end with.
        merged.generation_config.eos_token_id = prompt.end_of_answer_id(module.tokenizer)
        merged.save_pretrained(tmp)
        prompt.save_tokenizer(module.tokenizer, tmp)
        meta = {"base_model": module.hparams.model_name_or_path, "prompt": prompt.record(module.tokenizer)}
        (tmp / "nlicot.json").write_text(json.dumps(meta, indent=2))
    return out


def main() -> None:
    from jsonargparse import CLI

    try:
        out = CLI(export, as_positional=False)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
