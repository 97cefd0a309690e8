"""Model-name errors of the offline bases are one ``error:`` line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nlicot.prompt import SpecialIds, TemplateTokenError


@pytest.mark.slow
def test_unknown_tiny_name_is_one_error_line(repo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nlicot", "fit", "--config", "configs/demo.yaml", "--model.model_name_or_path=tiny-xl",
         "--trainer.max_steps=1", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "error: unknown model name 'tiny-xl'" in proc.stderr and "Traceback" not in proc.stderr


class _NoControlTokens:
    """What a non-Mistral tokenizer (e.g. SmolLM2's) answers for tokens it does not know: the unk id."""

    name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    unk_token_id = 0
    bos_token_id, eos_token_id = 1, 2

    def convert_tokens_to_ids(self, tokens):
        return [self.unk_token_id for _ in tokens]


def test_tokenizer_without_inst_tokens_is_a_clear_template_error():
    try:
        SpecialIds.of(_NoControlTokens())
    except TemplateTokenError as e:
        assert "SmolLM2" in str(e) and "[INST]" in str(e)
    else:
        raise AssertionError("no error")
