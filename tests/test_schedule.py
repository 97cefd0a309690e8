"""Warmup-steps + cosine: values at the edges, exact resume, smooth extension."""

from __future__ import annotations

import math

import pytest
import torch

from nlicot.schedule import Plan, WarmupCosine


def lrs(sched: WarmupCosine, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def make(warmup: int, total: int, floor: float = 0.1, rewarm: bool = False) -> WarmupCosine:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return WarmupCosine(opt, warmup, total, floor, rewarm=rewarm)


def test_edges():
    seq = lrs(make(4, 20), 22)
    assert seq[0] == pytest.approx(1 / 5)  # step 0 already trains
    assert seq[3] == pytest.approx(4 / 5)
    assert seq[4] == pytest.approx(1.0)  # end of warmup: the peak
    assert seq[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert seq[20] == pytest.approx(0.1) and seq[21] == pytest.approx(0.1)  # floor, then flat
    assert all(a >= b for a, b in zip(seq[4:], seq[5:]))


def test_warmup_equal_to_total_and_zero_warmup():
    seq = lrs(make(10, 10), 12)
    assert seq[9] == pytest.approx(10 / 11) and seq[10] == pytest.approx(0.1)
    assert lrs(make(0, 10), 1)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        make(5, 0)


def test_resume_is_exact():
    full = lrs(make(3, 30), 30)
    first = make(3, 30)
    lrs(first, 11)
    state = first.state_dict()
    resumed = make(3, 30)
    resumed.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]  # optimizer state restored
    resumed.load_state_dict(state)
    assert lrs(resumed, 19) == pytest.approx(full[11:], abs=0, rel=0)


@pytest.mark.parametrize("stop", [2, 15, 30])  # during warmup, mid-cosine, after the end
def test_extension_has_no_jump_and_no_second_warmup(stop):
    first = make(5, 30)
    before = lrs(first, stop)
    longer = make(5, 60)
    longer.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]
    longer.load_state_dict(first.state_dict())
    after = lrs(longer, 61 - stop)
    seq = before + after
    ordinary = max(abs(a - b) for a, b in zip(before, before[1:]))
    jump = abs(after[0] - (first.get_last_lr()[0]))
    assert jump == 0.0  # the next step runs at the LR the stopped run would have used
    steps = [abs(a - b) for a, b in zip(seq, seq[1:])]
    assert max(steps[stop - 1 : stop + 1]) <= ordinary + 1e-12
    peak_after = max(after)
    assert peak_after <= max(before[-1], 1.0) and (stop < 5 or peak_after <= before[-1] + 1e-12)
    assert after[-1] == pytest.approx(0.1)


def test_rewarm_on_request():
    first = make(5, 20)
    lrs(first, 20)
    again = make(5, 40, rewarm=True)
    again.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]
    again.load_state_dict(first.state_dict())
    seq = lrs(again, 20)
    assert seq[5] == pytest.approx(1.0) and seq[0] < seq[4] < seq[5] and seq[-1] > 0.1


def test_plan_is_continuous_where_rebased():
    plan = Plan.initial(10, 100, 0.0)
    for step in (0, 5, 10, 57, 99, 100, 130):
        assert plan.extended(step, 300, 10, rewarm=False).factor(step) == pytest.approx(plan.factor(step))
