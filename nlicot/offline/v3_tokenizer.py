"""The Mistral v3 tokenizer: the file mistral-common ships and the settings that make it encode like Mistral.

Why here: every offline model starts from the real Mistral-7B-v0.3 tokenizer (so token counts, prompt ids and
length filters are the real ones), and :func:`nlicot.hub.load_tokenizer` loads any v3 folder, hub or offline,
with the same settings; one module below both keeps the import graph acyclic.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_TOKENIZER_FILE = "mistral_instruct_tokenizer_240323.model.v3"


def mistral_v3_tokenizer_file() -> Path:
    """The Mistral-7B-v0.3 sentencepiece model that the mistral-common package ships."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / _TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common does not ship {_TOKENIZER_FILE} (looked at {path})")
    return path


def load_v3_tokenizer(folder: str | Path):
    """Load a Mistral v3 tokenizer folder with the settings that match mistral-common's own encoding.

    ``legacy=False`` stops the converted sentencepiece tokenizer from inserting a stray ``▁`` after special
    tokens; the prompt ids are then identical to ``MistralTokenizer.encode_chat_completion`` (tested).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), legacy=False)
    if tok.pad_token_id is None:
        # Padding never reaches the loss (labels are -100 there); EOS is what Mistral fine-tunes use.
        tok.pad_token = tok.eos_token
    return tok


def write_v3_tokenizer(folder: Path):
    """Put the real Mistral v3 tokenizer into ``folder`` (tokenizer.model + tokenizer.json, as on the hub) and
    return it loaded: every offline model starts with this."""
    shutil.copyfile(mistral_v3_tokenizer_file(), folder / "tokenizer.model")
    tokenizer = load_v3_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer
