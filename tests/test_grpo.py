"""GRPO: advantages, reward terms on completions written the way models write them, the clipped loss on a hand-computed
case, KL = 0 against the adapter-disabled base when the LoRA is zero, log-probs that match a plain forward, seeded
sampling, start from an SFT adapter folder or .ckpt, one-line errors, and (slow) exact resume after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from nlicot.args import GenerationConfig, LoRAConfig, OptimConfig, ScheduleConfig
from nlicot.checkpointing import AdapterExport, AtomicCheckpointIO
from nlicot.data import NLICoTDataModule
from nlicot.generation import Generated
from nlicot.grpo import GRPOConfig, GRPOModule
from nlicot.grpo_objective import (
    KL_CLAMP,
    GRPOSettingsError,
    adapter_sha256,
    answer_format_ok,
    group_advantages,
    grpo_loss,
    k3_kl,
    refill_indices,
    reward_terms,
    shaped_advantages,
)
from nlicot.prompt import encode_prompts
from nlicot.sft import NLICoTModule

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(model_name_or_path="tiny", compute_dtype="float32", gradient_checkpointing=False,
             lora=LoRAConfig(r=4, alpha=8, dropout=0.0), generation=GenerationConfig(max_new_tokens=16))


def small_grpo(**grpo) -> GRPOModule:
    """The tiny GRPO module of these tests (G = 2, 16 new tokens, LoRA r 4 without dropout); ``grpo`` overrides."""
    return GRPOModule(**SMALL, grpo=GRPOConfig(**(dict(num_generations=2, brevity_free_tokens=4) | grpo)))


# ---------------------------------------------------------------- pure functions
def test_advantages_are_normalised_within_each_group_and_zero_for_flat_groups() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0],
                            [0.3, 0.3 + 1e-9, 0.3, 0.3]])  # fmt: skip
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(adv[1], torch.zeros(4))
    sd = math.sqrt(0.1875)  # population std of (1, 0, 0, 0)
    assert torch.allclose(adv[2], torch.tensor([0.75 / sd, -0.25 / sd, -0.25 / sd, -0.25 / sd]))
    assert torch.equal(adv[3], torch.zeros(4))  # float noise is not a signal: no ±1 advantages out of it
    assert torch.allclose(adv[:3].mean(dim=1), torch.zeros(3), atol=1e-6)  # the group mean is the baseline


COMPLETIONS = [
    # (text as a model writes it, gold, expected correct, expected format)
    ('{"thought_process": "step 1: The premise says Anna has a red car. step 2: The hypothesis says Anna has a '
     'car. step 3: entailment.", "predicted_label": 1}', 1, 1.0, 1.0),
    ('{"thought_process": "step 1: Ben has two cats. step 2: at least five? step 3: no.", "predicted_label": 1}',
     0, 0.0, 1.0),  # well-formed but wrong
    ('Sure! Here is my answer:\n{"thought_process": "step 1: x step 2: y step 3: z", "predicted_label": 0}\nHope '
     'this helps.', 0, 1.0, 0.0),  # right label inside prose: scored, but not the format asked for
    ('{"thought_process": "step 1: a step 2: b step 3: c", "predicted_label": "entailment"}', 1, 1.0, 0.0),
    ('{"Thought Process": "step 1: a step 2: b step 3: c", "Predicted Label": 0}', 0, 1.0, 0.0),  # alias keys
    ('{"thought_process": "step 1: a step 2: b step 3: c", "predicted_label": true}', 1, 1.0, 0.0),  # bool
    ('{"thought_process": "step 1: a step 2: b", "predicted_label": 1, "confidence": 0.9}', 1, 1.0, 0.0),
    ('{"thought_process": "step 1: The premise says Leo drew a horse. step 2: The hyp', 1, 0.0, 0.0),  # cut off
    ("{'thought_process': 'step 1: a step 2: b step 3: c', 'predicted_label': 0,}", 0, 1.0, 0.0),  # py-ish
    ("I think the answer is entailment.", 1, 0.0, 0.0),  # no label key: never guessed
    ('{"thought_process": "step 1: a step 2: b step 3: c", "predicted_label": 2}', 1, 0.0, 0.0),
]


def test_reward_terms_on_realistic_completions() -> None:
    texts = [c[0] for c in COMPLETIONS]
    terms = reward_terms(texts, [10] * len(texts), [c[1] for c in COMPLETIONS], max_new_tokens=160,
                         brevity_free_tokens=96)
    assert terms["correct"].tolist() == [c[2] for c in COMPLETIONS]
    assert terms["format"].tolist() == [c[3] for c in COMPLETIONS]
    assert terms["brevity"].tolist() == [0.0] * len(texts)
    assert answer_format_ok("  " + texts[0] + "\n")  # surrounding whitespace is not a format error


def test_brevity_is_free_up_to_the_budget_then_falls_to_minus_one() -> None:
    text = COMPLETIONS[0][0]
    lengths = [0, 96, 112, 128, 160, 400]
    got = reward_terms([text] * 6, lengths, [1] * 6, max_new_tokens=160, brevity_free_tokens=96)["brevity"]
    assert got.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]


def test_clipped_loss_kl_and_clip_fraction_on_a_hand_computed_case() -> None:
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.5], [-0.2, 0.0]])  # ratios 1, e^0.5 = 1.649, e^-0.3 = 0.741 (last token masked)
    ref = torch.tensor([[-1.0, -1.0], [-0.5, 0.0]])  # d = ref - logp = 0, 1, 0
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = grpo_loss(logps, old, ref, adv, mask, clip_epsilon=0.2, kl_coef=0.1)
    # surrogates: min(1·1, 1·1) = 1; min(1.649, 1.2) = 1.2 (clipped); min(-0.741, -0.8) = -0.8 (clipped)
    kl_token = math.e - 1 - 1
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 + 0.1 * kl_token) / 3, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(kl_token / 3, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    # Clipped tokens get no policy gradient; the KL pulls the second token back toward the reference.
    expected = torch.tensor([[-1 / 3, 0.1 * (1 - math.e) / 3], [0.0, 0.0]])
    assert torch.allclose(logps.grad, expected, atol=1e-6)


def test_ratio_one_gives_the_plain_policy_gradient_and_k3_is_zero_only_at_agreement() -> None:
    logps = torch.tensor([[-0.7, -1.3, -2.0]], requires_grad=True)
    loss, stats = grpo_loss(logps, logps.detach(), None, torch.tensor([0.5]), torch.ones(1, 3, dtype=torch.bool),
                            clip_epsilon=0.2, kl_coef=0.0)
    loss.backward()
    assert torch.allclose(logps.grad, torch.full((1, 3), -0.5 / 3))
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio"].item() == 1.0
    a = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.equal(k3_kl(a, a), torch.zeros(3))
    assert (k3_kl(a, a + torch.tensor([0.5, -0.5, 1.0])) > 0).all()



WEIGHTS = {"correct": 1.0, "format": 0.5, "brevity": 0.5}  # configs/grpo.yaml


def group_terms(texts_gold_lengths: list[tuple[str, int, int]]) -> dict[str, torch.Tensor]:
    texts, gold, lengths = zip(*texts_gold_lengths, strict=True)
    terms = reward_terms(list(texts), list(lengths), list(gold), max_new_tokens=120, brevity_free_tokens=80)
    return {k: v.view(1, -1) for k, v in terms.items()}


def test_a_one_token_brevity_difference_in_an_all_correct_group_is_not_a_full_advantage() -> None:
    right, wrong = COMPLETIONS[0][0], COMPLETIONS[1][0]  # both well formed; label 1 and label 1 (gold 0 → wrong)
    flat = group_terms([(right, 1, 60)] * 7 + [(right, 1, 81)])  # all correct, the last 1 token over the budget
    summed = sum(w * flat[k] for k, w in WEIGHTS.items())
    assert group_advantages(summed)[0, -1].item() == pytest.approx(-2.6458, abs=1e-3)  # the old objective: hijacked
    for scale in ("group", "batch", "none"):
        adv = shaped_advantages(flat, WEIGHTS, scale)
        assert abs(adv[0, -1].item()) < 0.1, scale
        assert adv[0, -1].item() == pytest.approx(-0.5 / 40 * 7 / 8, abs=1e-6)  # w_b / span, centred
        assert adv.sum().item() == pytest.approx(0.0, abs=1e-6)
    # a wrong label among 7 right ones (same length, same format) still gets the full correctness advantage
    mixed = group_terms([(right, 1, 60)] * 7 + [(wrong, 0, 60)])
    adv = shaped_advantages(mixed, WEIGHTS, "group")
    assert adv[0, -1].item() == pytest.approx(-math.sqrt(7), abs=1e-3)  # −(7/8) / √(7/64)
    assert adv[0, 0].item() == pytest.approx(1 / math.sqrt(7), abs=1e-3)


def test_scale_rewards_group_batch_and_none_follow_trl() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    group = group_advantages(rewards, "group")
    assert torch.allclose(group[1], torch.tensor([1.0, 1.0, -1.0, -1.0]))
    assert torch.allclose(group_advantages(rewards, "batch"), centred / rewards.std(unbiased=False))
    assert torch.allclose(group_advantages(rewards, "none"), centred)
    assert all(torch.equal(group_advantages(rewards, s)[2], torch.zeros(4)) for s in ("group", "batch", "none"))
    with pytest.raises(GRPOSettingsError, match="scale_rewards='std'"):
        group_advantages(rewards, "std")


def test_shaping_terms_are_centred_not_scaled_so_format_keeps_its_weight() -> None:
    """A group where only the format differs (all wrong, e.g. from the base): the advantage is the format weight
    times the centred term, whatever the group's spread."""
    well, sloppy = COMPLETIONS[1][0], COMPLETIONS[3][0]  # both read as label 1, gold 0: wrong
    terms = group_terms([(well, 0, 30), (sloppy, 0, 30), (sloppy, 0, 30), (sloppy, 0, 30)])
    adv = shaped_advantages(terms, WEIGHTS, "group")
    assert torch.allclose(adv[0], torch.tensor([0.375, -0.125, -0.125, -0.125]))


def test_verdict_term_rewards_a_step_3_that_states_the_chosen_label() -> None:
    def answer(step3: str, label: int) -> str:
        return ('{"thought_process": "step 1: The premise says Ben has two cats. step 2: The hypothesis says Ben has '
                f'pets. step 3: {step3}", "predicted_label": {label}}}')

    texts = [answer("entailment, because cats are pets.", 1),
             answer("no entailment, because the premise does not mention pets.", 0),
             answer("no entailment, because the premise does not mention pets.", 1),  # argues 0, answers 1
             answer("the hypothesis cannot be inferred from the premise.", 0),
             answer("cats are animals.", 1),  # no verdict stated
             '{"thought_process": "step 1: The premise says', "entailment"]  # cut off; no JSON at all
    terms = reward_terms(texts, [10] * len(texts), [1] * len(texts), max_new_tokens=160, brevity_free_tokens=96)
    assert terms["verdict"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    grouped = {k: v[:4].view(1, -1) for k, v in terms.items()}
    with_verdict = shaped_advantages(grouped, WEIGHTS | {"verdict": 0.2}, "group")
    delta = with_verdict - shaped_advantages(grouped, WEIGHTS, "group")
    assert torch.allclose(delta, torch.tensor([[0.05, 0.05, -0.15, 0.05]]))  # 0.2 × centred, not scaled

def test_k3_is_clamped_as_verl_does() -> None:
    logps = torch.tensor([-0.1, -0.1, -0.1, -50.0], requires_grad=True)
    ref = torch.tensor([-0.1, -3.0, -30.0, -0.1])  # d = 0, -2.9, -29.9, +49.9
    kl = k3_kl(logps, ref)
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(math.exp(-2.9) + 2.9 - 1, abs=1e-6)  # inside the bound: unchanged
    assert kl[2].item() == KL_CLAMP and kl[3].item() == KL_CLAMP  # linear growth and exp(49.9) both bounded
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert logps.grad[2].item() == 0.0 and logps.grad[3].item() == 0.0 and logps.grad[1].item() != 0.0


def test_refill_draws_depend_on_seed_and_key_only() -> None:
    a = refill_indices(100, 5, seed=0, key="3/0/1")
    assert a == refill_indices(100, 5, seed=0, key="3/0/1") and len(set(a)) == 5
    assert a != refill_indices(100, 5, seed=0, key="3/0/2") and a != refill_indices(100, 5, seed=1, key="3/0/1")
    assert sorted(refill_indices(3, 10, seed=0, key="k")) == [0, 1, 2]  # never more than the split holds


def test_adapter_hash_sees_any_changed_value_name_or_dtype() -> None:
    state = {"a.lora_A": torch.ones(2, 3), "a.lora_B": torch.zeros(3, 2)}
    h = adapter_sha256(state)
    assert h == adapter_sha256({k: v.clone() for k, v in reversed(state.items())})
    changed = {**state, "a.lora_B": state["a.lora_B"].clone()}
    changed["a.lora_B"][0, 0] = 1e-7
    assert adapter_sha256(changed) != h
    assert adapter_sha256({**state, "a.lora_A": state["a.lora_A"].double()}) != h
    assert adapter_sha256({"b.lora_A": state["a.lora_A"], "a.lora_B": state["a.lora_B"]}) != h

# ---------------------------------------------------------------- the module on the tiny model
@pytest.fixture(scope="module")
def grpo(tiny_path) -> GRPOModule:
    module = small_grpo()
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return encode_prompts(tokenizer, ["Anna has a red car.", "Two kids run in a park while their parents watch."],
                          ["Anna has a car.", "Nobody is outside."])


def made_completions(tokenizer) -> list[Generated]:
    texts = ['{"thought_process": "step 1: a', '{"thought', 'I think', 'No: {"predicted_label": 0}']
    reasons = ["length", "eos", "json", "eos"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [Generated(t, i, r) for t, i, r in zip(texts, ids, reasons, strict=True)]


def full_forward_logps(module: GRPOModule, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Independent route: one unpadded sequence through the whole model, logits for every position."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = module.model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / module.generation.temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_completion_logps_equal_a_plain_forward_despite_left_padding(grpo, prompts, tokenizer) -> None:
    completions = made_completions(tokenizer)
    layout = grpo._layout(prompts, completions)
    with torch.no_grad():
        got = grpo.completion_logps(layout)
    eos = tokenizer.eos_token_id
    for i, c in enumerate(completions):
        tokens = c.token_ids + ([eos] if c.finish_reason == "eos" else [])
        assert layout["completion_mask"][i].sum() == len(tokens)
        want = full_forward_logps(grpo, prompts[i // 2], tokens)
        assert torch.allclose(got[i, : len(tokens)], want, atol=1e-4), i
        assert (got[i, len(tokens) :] == 0).all()


def test_kl_to_the_adapter_disabled_base_is_zero_for_a_zero_lora_and_positive_after_a_change(
    tiny_path, prompts, tokenizer
) -> None:
    module = small_grpo()
    module.configure_model()
    layout = module._layout(prompts, made_completions(tokenizer))
    mask = layout["completion_mask"]
    policy = module._eval_logps(layout, adapter=True)
    ref = module._eval_logps(layout, adapter=False)
    assert k3_kl(policy, ref)[mask].abs().max().item() < 1e-7  # fresh LoRA: B = 0, the policy is the base
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    moved = module._eval_logps(layout, adapter=True)
    assert torch.equal(module._eval_logps(layout, adapter=False), ref)  # the reference did not move with it
    assert k3_kl(moved, ref)[mask].mean().item() > 1e-3
    assert module.model.training  # eval-mode passes restore the mode they found


def test_kl_to_the_start_adapter_is_zero_at_the_start_and_the_swap_leaves_the_live_weights(
    tiny_path, prompts, tokenizer
) -> None:
    module = small_grpo(kl_reference="start")
    module.configure_model()
    with torch.no_grad():  # a start adapter far from the base (as an SFT adapter is)
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    module._start_weights = {k: v.clone() for k, v in module.adapter_state_dict().items()}
    layout = module._layout(prompts, made_completions(tokenizer))
    mask = layout["completion_mask"]
    base = module._eval_logps(layout, adapter=False)
    assert k3_kl(module._eval_logps(layout, adapter=True), base)[mask].mean().item() > 1e-3
    assert k3_kl(module._eval_logps(layout, adapter=True), module.reference_logps(layout))[mask].abs().max() < 1e-7
    with torch.no_grad():  # GRPO moves the adapter
        for name, p in module.model.named_parameters():
            if "lora_A" in name:
                p.add_(0.3)
    live = {k: v.clone() for k, v in module.adapter_state_dict().items()}
    ref = module.reference_logps(layout)
    assert all(torch.equal(v, live[k]) for k, v in module.adapter_state_dict().items())  # swapped back exactly
    policy = module._eval_logps(layout, adapter=True)
    assert k3_kl(policy, ref)[mask].mean().item() > 1e-3
    assert not torch.allclose(ref, base)  # the start adapter, not the adapter-off base


def test_sampling_depends_on_the_seed_and_row_only(grpo, prompts) -> None:
    rows = [{"id": f"row{i}", "prompt_ids": p} for i, p in enumerate(prompts)]
    first = grpo.sample(rows)
    torch.manual_seed(999)
    torch.rand(100)
    state = torch.get_rng_state()
    again = grpo.sample(rows)
    alone = grpo.sample(rows[1:])
    assert torch.equal(torch.get_rng_state(), state)  # the training streams are not disturbed
    grpo.generation.seed = 8
    try:
        other = grpo.sample(rows)
    finally:
        grpo.generation.seed = 0
    assert len(first) == 2 * len(prompts)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in alone] == [c.token_ids for c in first[2:]]  # not the batch, the row decides
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert first[0].token_ids != first[1].token_ids  # the G chains of a row differ
    assert all(1 <= c.num_tokens <= 16 for c in first)


@pytest.mark.parametrize(
    ("override", "message"),
    [({"num_generations": 1}, "model.grpo.num_generations=1 must be >= 2"),
     ({"clip_epsilon": 0.0}, "model.grpo.clip_epsilon=0.0 must be > 0"),
     ({"kl_coef": -0.1}, "model.grpo.kl_coef=-0.1 must be >= 0"),
     ({"brevity_free_tokens": 16},
      "model.grpo.brevity_free_tokens=16 must be in [0, model.generation.max_new_tokens=16)"),
     ({"max_refills": -1}, "model.grpo.max_refills=-1 must be >= 0")],
)
def test_bad_settings_are_refused_before_the_model_loads(override, message) -> None:
    module = small_grpo(**override)
    with pytest.raises(GRPOSettingsError) as err:
        module.setup("fit")
    assert message in str(err.value)
    assert module.model is None


def test_a_kl_reference_outside_its_choices_is_one_error_line_at_parse_time(capsys) -> None:
    """``kl_reference`` is typed (Literal): jsonargparse refuses it with the dotted key, as it does SFT's settings."""
    from nlicot.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "configs/grpo.yaml"), "--model.grpo.kl_reference=sft", "--print_config"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2
    assert len(errors) == 1 and 'Parser key "model.grpo.kl_reference"' in errors[0] and "sft" in errors[0], errors


@pytest.mark.slow
def test_cli_prints_one_error_line_for_g_below_two(tmp_path) -> None:
    cmd = [sys.executable, "-m", "nlicot", "fit", "--config", str(REPO / "configs/grpo.yaml"),
           "--model.grpo.num_generations=1", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
           f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and "model.grpo.num_generations=1 must be >= 2" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------- start from SFT
@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_path) -> Path:
    """Two real SFT steps (LoRA r=4 on q/v, high LR so the adapter is far from zero): .ckpt + adapter folder."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = tmp_path_factory.mktemp("sft")
    L.seed_everything(0)
    dm = NLICoTDataModule(train_path=str(REPO / "data/demo/train.jsonl"), micro_batch_size=4)
    model = NLICoTModule("tiny", compute_dtype="float32", gradient_checkpointing=False,
                         lora=LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                         optim=OptimConfig(name="adamw", learning_rate=5e-2), schedule=ScheduleConfig(warmup_steps=0))
    ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_steps=2,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[ckpt, AdapterExport()],
                        plugins=[AtomicCheckpointIO()], default_root_dir=root)
    trainer.fit(model, dm)
    return root


def test_starts_from_an_sft_adapter_folder_or_checkpoint_alike(sft_run) -> None:
    saved = torch.load(sft_run / "last.ckpt", weights_only=True)["state_dict"]
    loaded = {}
    for start in (sft_run / "last.ckpt", sft_run / "adapter"):
        module = GRPOModule(**(SMALL | {"lora": LoRAConfig(r=32), "adapter_path": str(start)}),
                            grpo=GRPOConfig(num_generations=2, brevity_free_tokens=4, kl_reference="start"))
        module.configure_model()  # the adapter's own r wins
        state = module.adapter_state_dict()
        assert state.keys() == saved.keys() == module._start_weights.keys()
        assert all(torch.equal(state[k], saved[k]) and torch.equal(module._start_weights[k], saved[k])
                   for k in saved), start
        assert module.model.peft_config["default"].r == 4
        loaded[start.name] = module
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)  # SFT moved it off zero


# ---------------------------------------------------------------- slow: a real run, killed and resumed
FAST = ["--model.generation.max_new_tokens=24", "--model.grpo.brevity_free_tokens=8", "--model.grpo.num_generations=4",
        "--data.micro_batch_size=2", "--trainer.limit_val_batches=0",
        "--checkpoint.every_n_train_steps=2", "--model.optim.learning_rate=1e-2", "--model.schedule.warmup_steps=2",
        "--model.grpo.kl_coef=0.05", "--model.grpo.kl_reference=start", "--trainer.enable_progress_bar=false"]


def grpo_cmd(root: Path, adapter: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nlicot", "fit", "--config", str(REPO / "configs/grpo.yaml"), *FAST,
            f"--model.adapter_path={adapter}", f"--checkpoint.dirpath={root / 'ckpt'}",
            f"--trainer.logger.init_args.save_dir={root / 'tb'}", "--trainer.logger.init_args.name=run", *extra]


def scalars(root: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted((root / "tb" / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    acc = EventAccumulator(str(versions[-1]))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_grpo_logs_every_step_and_resumes_exactly_after_sigkill(tmp_path, sft_run, tiny_path) -> None:
    steps = 8
    adapter = sft_run / "adapter"
    proc = subprocess.run(grpo_cmd(tmp_path / "unbroken", adapter, f"--trainer.max_steps={steps}"),
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = scalars(tmp_path / "unbroken")
    for tag in ("train/loss", "train/lr", "grpo/reward", "grpo/reward_std", "grpo/reward_correct",
                "grpo/reward_format", "grpo/reward_brevity", "grpo/kl", "grpo/clip_fraction",
                "grpo/completion_tokens", "grpo/group_accuracy", "grpo/flat_groups", "grpo/refills"):
        assert sorted(ref[tag]) == list(range(steps)), tag
    print(f"\nflat groups {ref['grpo/flat_groups']}, refills {ref['grpo/refills']}")
    # the reference is the start adapter: at step 0 only the train-mode forward's LoRA dropout separates the
    # policy from it; the resumed run below must rebuild it from adapter_path, not from the checkpoint it resumes
    assert ref["grpo/kl"][0] < 0.01
    assert max(ref["train/grad_norm"].values()) > 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(grpo_cmd(killed, adapter, f"--trainer.max_steps={steps}"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from test_training import wait_for_checkpoint

        wait_for_checkpoint(killed / "ckpt", 4, proc, timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)
    resumed_from = ckpt["global_step"]
    assert 2 <= resumed_from < steps
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # adapter only
    proc = subprocess.run(grpo_cmd(killed, adapter, f"--trainer.max_steps={steps}", "--ckpt_path=last"),
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = scalars(killed)
    assert sorted(again["train/lr"]) == list(range(resumed_from, steps))
    for tag in ("train/lr", "train/loss", "grpo/reward", "grpo/completion_tokens", "grpo/kl", "train/grad_norm",
                "grpo/refills", "grpo/flat_groups"):
        worst = max(abs(again[tag][s] - ref[tag][s]) for s in range(resumed_from, steps))
        print(f"\nresumed at step {resumed_from}: max |d {tag}| = {worst:.3g}")
        assert worst <= 1e-6, (tag, worst)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), str(killed / "ckpt" / "adapter"))
    assert sum("lora_" in k for k in model.state_dict()) == len(ckpt["state_dict"])
