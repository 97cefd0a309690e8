"""``tiny-nli``: a tiny Mistral *pretrained* offline on unlabelled text, so that a frozen base + LoRA can learn NLI.

Why: QLoRA means a frozen pretrained base plus a small adapter. The random ``tiny`` base cannot copy a word
from the premise into the answer (measured: ~0.73 test accuracy at best on the synthetic task, names and
colours near chance), so it cannot stand in for a pretrained model. This module builds a slightly larger tiny
Mistral from a config and pretrains it once, with plain causal-LM loss, on unlabelled documents of the
synthetic task's language (:func:`nlicot.offline.synthetic_task.pretraining_text`: ``Premise: …\\nHypothesis: …``
pairs of train combinations, both labels, followed by some of their sentences repeated verbatim; no labels or
thoughts).
The repeats teach the base to copy a whole earlier sentence (induction) — the skill a real pretrained model
brings and the thought's restating steps need. The folder is then loaded by the normal path
(``from_pretrained`` → NF4 → LoRA) like any hub model.

Cost: only the few hundred tokens the text uses get an output row; every other row of the 32,768-token head
is zero and stays zero, so the exact full-vocabulary softmax is the used rows plus one constant logit
``log(#unused)`` (all unused logits are exactly 0). That keeps pretraining (2,400 steps) to a few minutes on 2
cores.
Deterministic for a given thread count (fixed seeds); :mod:`nlicot.hub` caches the built folder atomically.
The LR follows :class:`nlicot.schedule.WarmupCosine`, the fine-tuning schedule, stepped once per optimizer step.

Shipped: pretraining costs ~3 minutes on 2 cores, more than the demo's fine-tuning, so its result ships with the
package (``weights/<name>-v<version>.safetensors``, ~0.5 MB): only what pretraining changes — the body and the
used rows of the embedding and the head. Every other row is the seeded initialisation (embedding) or zero (head),
so :func:`build` rebuilds the exact model from the seed plus that file, in seconds, and the numbers in README.md
are the same on every machine. ``python -m nlicot.offline.tiny_nli FILE`` pretrains again and writes the file you
name (to ship it, ``nlicot/weights/<name>-v<version>.safetensors`` of a checkout); a file whose recording of the
recipe differs from :data:`RECIPES` is ignored (the model is pretrained instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nlicot.atomic import atomic_write
from nlicot.offline.random_tiny import tiny_config_kwargs
from nlicot.offline.synthetic_task import SynthConfig, pretraining_text
from nlicot.offline.v3_tokenizer import write_v3_tokenizer


@dataclass(frozen=True)
class Recipe:
    """Architecture and pretraining schedule of one pretrained tiny base (bump ``version`` on any change)."""

    version: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    texts: int
    seed: int = 1234


RECIPES = {
    # The width of ``tiny`` (64) keeps a fine-tuning step as cheap as the random demo's: the 32,768-row head,
    # not the body, dominates a step's cost.
    # v3: the LR from nlicot.schedule (v2 had its own inline warmup x cosine, a slightly different curve)
    "tiny-nli": Recipe(version=3, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, steps=2400, batch_size=32,
                       learning_rate=3e-3, warmup_steps=50, texts=20000),
}


def folder_name(name: str) -> str:
    """The cache folder of ``name``: it carries the recipe's version, so a changed recipe is rebuilt."""
    return f"{name}-mistral-v3-{RECIPES[name].version}"


def weights_file(name: str) -> Path:
    """The shipped result of ``name``'s pretraining (package data, ``nlicot/weights/``)."""
    return Path(__file__).parents[1] / "weights" / f"{name}-v{RECIPES[name].version}.safetensors"


def _pretraining_batches(tokenizer, recipe: Recipe):
    """Token-id lists of the unlabelled text (BOS … EOS), plus the sorted set of ids it uses."""
    texts = list(pretraining_text(SynthConfig(), recipe.texts, seed=recipe.seed))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    seqs = [[tokenizer.bos_token_id, *s, tokenizer.eos_token_id] for s in ids]
    used = sorted({t for s in seqs for t in s})
    return seqs, used


def pretrain(model, tokenizer, recipe: Recipe, log_every: int = 50) -> list[float]:
    """Causal-LM pretraining on the unlabelled text; returns the loss of every step."""
    import torch
    import torch.nn.functional as F

    from nlicot.schedule import WarmupCosine

    seqs, used = _pretraining_batches(tokenizer, recipe)
    vocab = model.config.vocab_size
    used_t = torch.tensor(used)
    remap = torch.full((vocab,), -100, dtype=torch.long)
    remap[used_t] = torch.arange(len(used))
    log_unused = math.log(vocab - len(used))
    head = model.lm_head.weight
    with torch.no_grad():
        head.zero_()
    used_head = torch.nn.Parameter(torch.randn(len(used), head.shape[1]) * 0.02)
    params = [p for n, p in model.named_parameters() if not n.startswith("lm_head")] + [used_head]
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    schedule = WarmupCosine(opt, warmup_steps=recipe.warmup_steps, total_steps=recipe.steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(recipe.steps):
        pick = torch.randint(len(seqs), (recipe.batch_size,), generator=gen).tolist()
        batch = [seqs[i] for i in pick]
        width = max(map(len, batch))
        inp = torch.tensor([s + [tokenizer.eos_token_id] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        target = remap[inp[:, 1:]].masked_fill(mask[:, 1:] == 0, -100)
        hidden = model.model(input_ids=inp, attention_mask=mask).last_hidden_state[:, :-1]
        logits = hidden @ used_head.T
        # exact full-vocabulary softmax: every unused row is zero, so those logits are all exactly 0
        logits = torch.cat([logits, torch.full_like(logits[..., :1], log_unused)], dim=-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            print(f"tiny-nli pretraining: step {step}/{recipe.steps} loss {loss.item():.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    with torch.no_grad():
        head[used_t] = used_head.detach()
    model.eval()
    return losses


def _initial_model(recipe: Recipe):
    """The seeded, untrained model: pretraining starts from it, and the shipped weights are applied to it."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    kwargs = tiny_config_kwargs() | {
        "hidden_size": recipe.hidden_size, "intermediate_size": recipe.intermediate_size,
        "num_hidden_layers": recipe.num_hidden_layers, "num_attention_heads": recipe.num_attention_heads,
        "num_key_value_heads": recipe.num_key_value_heads,
        "head_dim": recipe.hidden_size // recipe.num_attention_heads,
    }
    torch.manual_seed(recipe.seed)
    return MistralForCausalLM(MistralConfig(**kwargs))


def trained_part(model) -> dict:
    """What pretraining changed: the body, and the rows of the embedding and the head with a non-zero head row
    (the used tokens; :func:`pretrain` zeroes every other head row and never updates their embedding)."""
    used = model.lm_head.weight.detach().abs().sum(-1).nonzero().flatten()
    body = {k: v for k, v in model.state_dict().items() if not k.startswith(("lm_head.", "model.embed_tokens."))}
    return body | {"used_ids": used, "used_embedding": model.get_input_embeddings().weight.detach()[used],
                   "used_head": model.lm_head.weight.detach()[used]}


def _apply_trained(model, trained: dict) -> None:
    """Write :func:`trained_part`'s tensors into the seeded ``model`` (``trained`` itself is left as it is)."""
    import torch

    trained = dict(trained)
    used = trained.pop("used_ids")
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[used] = trained.pop("used_head")
        model.get_input_embeddings().weight[used] = trained.pop("used_embedding")
    missing, unexpected = model.load_state_dict(trained, strict=False)
    if unexpected or set(missing) != {"lm_head.weight", "model.embed_tokens.weight"}:
        raise ValueError(f"shipped weights do not fit the recipe's model: missing {missing}, unexpected {unexpected}")
    model.eval()


def _shipped(name: str) -> dict | None:
    """The shipped weights of ``name``, if they exist and were made by today's recipe."""
    from safetensors import safe_open

    path = weights_file(name)
    if not path.is_file():
        return None
    with safe_open(path, "pt") as f:
        if json.loads(f.metadata()["recipe"]) != asdict(RECIPES[name]):
            print(f"{path} was made by another recipe: pretraining {name} instead", file=sys.stderr)
            return None
        return {k: f.get_tensor(k) for k in f.keys()}


def build(name: str, folder: Path) -> None:
    """Write ``name`` into the empty ``folder`` (``nlicot.hub`` makes it atomic): the seeded model plus the shipped
    weights, or plus a fresh pretraining where none ship."""
    recipe = RECIPES[name]
    tokenizer = write_v3_tokenizer(folder)
    model = _initial_model(recipe)
    trained = _shipped(name)
    if trained is None:
        pretrain(model, tokenizer, recipe)
    else:
        _apply_trained(model, trained)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)


def write_weights(name: str, path: str | Path) -> Path:
    """Pretrain ``name`` from scratch and write its weights file to ``path`` (atomically)."""
    import tempfile

    import torch
    from safetensors.torch import save

    recipe = RECIPES[name]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_v3_tokenizer(Path(tmp))
    model = _initial_model(recipe)
    pretrain(model, tokenizer, recipe)
    data = save({k: v.contiguous() for k, v in trained_part(model).items()},
                metadata={"recipe": json.dumps(asdict(recipe)), "torch": torch.__version__,
                          "threads": str(torch.get_num_threads())})
    return atomic_write(path, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> None:
    """``python -m nlicot.offline.tiny_nli FILE [--name NAME]``: pretrain again and write the weights to FILE."""
    parser = argparse.ArgumentParser(prog="python -m nlicot.offline.tiny_nli", description=main.__doc__)
    parser.add_argument("output", type=Path, help="the .safetensors file to write (the shipped one: "
                        "nlicot/weights/<name>-v<version>.safetensors)")
    parser.add_argument("--name", choices=sorted(RECIPES), default="tiny-nli", help="the offline base to pretrain")
    args = parser.parse_args(argv)
    print(write_weights(args.name, args.output))


if __name__ == "__main__":
    main()
