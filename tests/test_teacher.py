"""Teacher modes: current shares the student's weights; ema moves by the rate after each step; fixed never moves."""

import pytest
import torch

from megatron_vopd.distill.teacher import Teacher


def student():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def build_copy():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def step(model, delta=1.0):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(delta)


def test_current_is_the_student_itself():
    s = student()
    t = Teacher("current", s)
    assert t.model is s and t.state_dict() == {}


def test_ema_moves_toward_the_student_by_the_rate():
    s = student()
    t = Teacher("ema", s, build_copy, ema_rate=0.05)
    start = [p.clone() for p in s.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(t.model.parameters(), start))
    assert not any(p.requires_grad for p in t.model.parameters())
    step(s, 1.0)
    t.update(s)
    for te, st in zip(t.model.parameters(), start):
        torch.testing.assert_close(te, st + 0.05, rtol=0, atol=1e-6)  # (1 - 0.05) * st + 0.05 * (st + 1)
    step(s, 1.0)
    t.update(s)
    for te, st in zip(t.model.parameters(), start):
        torch.testing.assert_close(te, 0.95 * (st + 0.05) + 0.05 * (st + 2), rtol=0, atol=1e-6)


def test_fixed_never_moves_and_round_trips_its_state():
    s = student()
    t = Teacher("fixed", s, build_copy)
    frozen = {k: v.clone() for k, v in t.state_dict().items()}
    step(s, 3.0)
    t.update(s)
    assert all(torch.equal(frozen[k], v) for k, v in t.state_dict().items())
    t2 = Teacher("fixed", student(), build_copy)
    t2.load_state_dict(frozen)
    assert all(torch.equal(frozen[k], v) for k, v in t2.state_dict().items())


@pytest.mark.parametrize("kwargs,match", [(dict(mode="teacher"), "distill.teacher"),
                                          (dict(mode="ema", build_copy=None), "needs a copy"),
                                          (dict(mode="ema", ema_rate=0.0), "distill.ema_rate")])
def test_bad_settings_are_named(kwargs, match):
    args = dict(mode="ema", build_copy=build_copy, ema_rate=0.05) | kwargs
    with pytest.raises(ValueError, match=match):
        Teacher(args.pop("mode"), student(), **args)
