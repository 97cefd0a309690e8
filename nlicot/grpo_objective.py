"""GRPO's rewards, advantages and clipped objective as pure functions of tensors and texts.

Why apart from the recipe (nlicot/grpo.py): these are the parts whose numbers decide what GRPO learns — a reward
that can be hijacked, an advantage that amplifies noise, a KL estimate that overflows — so they are tested on
hand-computed groups without a model (tests/test_grpo.py), and the recipe only wires them to sampling and the step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from nlicot.parsing import extract_prediction
from nlicot.thoughts import stated_verdict

#: Reward terms in the order they are logged; the total is their weighted sum.
REWARD_TERMS = ("correct", "format", "brevity", "verdict")
#: How advantages are scaled (``scale_rewards``, TRL's meaning): per group std, one batch std, or not at all.
SCALE_REWARDS = ("group", "batch", "none")
#: Upper bound of the per-token k3 estimate (verl's ``low_var_kl`` clamp).
KL_CLAMP = 10.0
_STD_FLOOR = 1e-6


class GRPOSettingsError(RuntimeError):
    """A GRPO setting that cannot work (G < 2, temperature ≤ 0, packed prompts …); the CLI prints one line."""


def answer_format_ok(text: str) -> bool:
    """The whole completion is one JSON object with a string ``thought_process`` and a 0/1 ``predicted_label``.

    Stricter than :func:`nlicot.parsing.extract_prediction` on purpose: the parser rescues sloppy answers so
    they can be scored; this term rewards writing the format the task asks for.
    """
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return False
    if not isinstance(obj, dict) or set(obj) != {"thought_process", "predicted_label"}:
        return False
    label = obj["predicted_label"]
    return isinstance(obj["thought_process"], str) and type(label) is int and label in (0, 1)


def reward_terms(
    texts: Sequence[str], num_tokens: Sequence[int], gold: Sequence[int], max_new_tokens: int, brevity_free_tokens: int
) -> dict[str, torch.Tensor]:
    """Per completion: ``correct`` (parsed label == gold, 1/0), ``format`` (1/0), ``brevity`` in [−1, 0],
    ``verdict`` (1/0).

    Brevity is 0 up to ``brevity_free_tokens`` generated tokens and falls linearly to −1 at ``max_new_tokens``:
    answers of a sensible length are not pushed shorter, long ones are (accuracy falls as thoughts grow).
    Verdict is 1 when the thought's last step (step 3) states the verdict the answer's label chose, read with
    the reader data_gen's ``build`` filters thoughts with (:func:`nlicot.thoughts.stated_verdict`): a thought
    that argues "no entailment" and then answers 1 is not rewarded for consistency. It rewards agreement, not
    correctness, hence a shaping term (``reward_verdict``, off by default: not measured yet).
    """
    parsed = [extract_prediction(t) for t in texts]
    labels = [e.label for e in parsed]
    span = max(1, max_new_tokens - brevity_free_tokens)
    return {
        "correct": torch.tensor([float(p is not None and p == g) for p, g in zip(labels, gold, strict=True)]),
        "format": torch.tensor([float(answer_format_ok(t)) for t in texts]),
        "brevity": torch.tensor([-min(1.0, max(0, n - brevity_free_tokens) / span) for n in num_tokens]),
        "verdict": torch.tensor([float(e.label is not None and bool(e.thought) and stated_verdict(e.thought) == e.label)
                                 for e in parsed]),
    }


def flat_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards → (P, 1) bool: the groups whose G rewards are all equal (population std below the floor).

    Such a group gives every completion advantage 0: no policy gradient, only KL. Dynamic sampling skips it.
    """
    return rewards.std(dim=1, keepdim=True, unbiased=False) < _STD_FLOOR


def group_advantages(rewards: torch.Tensor, scale_rewards: str = "group") -> torch.Tensor:
    """(P, G) rewards → (r − group mean) / scale, 0 for a group whose rewards are all equal.

    ``scale_rewards`` (TRL's meaning): ``group`` divides by each group's own std (population std), ``batch`` by the
    std of every reward in the batch (one scale for all groups: a group that barely varies keeps a small
    advantage), ``none`` leaves the centred rewards in reward units (Dr. GRPO: no per-group amplification).
    The flat guard matters: dividing a float-noise difference by a float-noise std would turn "no signal" into ±1.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise GRPOSettingsError(f"model.scale_rewards={scale_rewards!r} must be one of {', '.join(SCALE_REWARDS)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        scale = rewards.std(dim=1, keepdim=True, unbiased=False)
    elif scale_rewards == "batch":
        scale = rewards.std(unbiased=False).expand(rewards.shape[0], 1)
    else:
        scale = torch.ones(rewards.shape[0], 1, dtype=rewards.dtype)
    return torch.where(flat_groups(rewards), torch.zeros_like(rewards), centred / scale.clamp(min=_STD_FLOOR))


def shaped_advantages(terms: dict[str, torch.Tensor], weights: dict[str, float], scale_rewards: str) -> torch.Tensor:
    """(P, G) reward terms → advantages: the task term scaled, the shaping terms only centred.

    ``A = group_advantages(w_c·correct, scale_rewards) + Σ_k w_k·(term_k − group mean of term_k)`` for the shaping
    terms k (``format``, ``brevity``, ``verdict``: every key of ``weights`` but ``correct``).

    Why not one std over the summed reward (the old objective): the std is a property of the *group*, not of
    the term that varies. In a group of 8 correct, well-formatted answers where one is a token over the brevity
    budget, the summed rewards differ by 0.0125, the std is 0.0041, and that answer got advantage −2.65 — as
    large as a wrong label's in a 7-of-8 group: once correctness saturated, GRPO optimised length. Here the
    correctness term alone is scaled (it is 0/1, so its group std is at least √(1/G·(G−1)/G) when it varies:
    its advantage is bounded, ≤ √(G−1) = 2.65 at G 8), and a shaping term moves an advantage by at most its
    weight times its own range (format: w_f; brevity: w_b per full budget; a 1-token excess: w_b / span). A
    shaping term therefore never outweighs its stated weight, and "the group is flat in correctness" stays a
    small signal, not a full one.
    """
    correct = weights["correct"] * terms["correct"]
    adv = group_advantages(correct, scale_rewards)
    for name, w in weights.items():
        if name != "correct" and w:
            term = w * terms[name]
            adv = adv + (term - term.mean(dim=1, keepdim=True))
    return adv


def refill_indices(num_rows: int, count: int, seed: int, key: str) -> list[int]:
    """``count`` distinct row indices in [0, num_rows) drawn by a generator seeded by (seed, key) only.

    The refill prompts of dynamic sampling: a resumed run draws the very rows an unbroken one did (the key names
    the optimizer step, rank and refill round), and the train loader's order and position are left alone.
    """
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    return torch.randperm(num_rows, generator=gen)[: min(count, num_rows)].tolist()


def adapter_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over an adapter's tensors (names, dtypes, shapes, bytes) in name order: what GRPO started from."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate on tokens sampled from π_θ: exp(d) − d − 1, d = log π_ref − log π_θ.

    Unbiased, never negative, and 0 exactly where the two policies agree (Schulman's k3). Clamped as verl's
    ``kl_penalty`` ``low_var_kl`` is (verl/trainer/ppo/core_algos.py): d to [−20, 20] before the exp, so one
    token the policy made far likelier than the reference cannot overflow to inf, and the estimate to at most
    ``KL_CLAMP`` (10) nats, so one such token cannot dominate the step's KL gradient (a clamped token gets none).
    """
    d = (ref_logps - logps).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(max=KL_CLAMP)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss over completion tokens (N×T tensors, ``advantages`` N, ``mask`` N×T bool).

    Returns the loss (token-level mean over ``mask``) and detached figures: mean KL, the fraction of tokens
    where the clip was active (ρ outside [1−ε, 1+ε] on the side where it stops the update) and mean ratio.
    """
    mask = mask.to(logps.dtype)
    count = mask.sum().clamp(min=1.0)
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logps) if ref_logps is None else k3_kl(logps, ref_logps)
    if kl_coef:
        per_token = per_token + kl_coef * kl
    loss = (per_token * mask).sum() / count
    active = ((ratio > 1.0 + clip_epsilon) & (adv > 0)) | ((ratio < 1.0 - clip_epsilon) & (adv < 0))
    stats = {
        "kl": (kl.detach() * mask).sum() / count,
        "clip_fraction": (active.to(mask.dtype) * mask).sum() / count,
        "ratio": (ratio.detach() * mask).sum() / count,
    }
    return loss, stats
