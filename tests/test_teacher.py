"""EMA teacher update, momentum schedule and BN buffer protection."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pcdet_rmae_ts.teacher import cosine_momentum, ema_update, frozen_bn_buffers


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.0, 0.99) == 0.99
    assert cosine_momentum(1.0, 0.99) == 1.0
    assert math.isclose(cosine_momentum(0.5, 0.99), 0.995)
    assert cosine_momentum(2.0, 0.99) == 1.0  # clamped


def test_ema_moves_teacher_toward_student_by_the_expected_amount():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.data.normal_()
    student[1].running_mean.fill_(0.7)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for old, new, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_frozen_bn_buffers_keep_running_stats():
    bn = nn.BatchNorm1d(3).train()
    state = copy.deepcopy(bn.state_dict())
    with frozen_bn_buffers(bn):
        out = bn(torch.randn(16, 3) * 5 + 2)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert abs(float(out.mean())) < 1e-5  # batch statistics were used
    assert bn.momentum == 0.1 and bn.track_running_stats
    with frozen_bn_buffers(bn):
        bn.eval()
        out = bn(torch.full((4, 3), 2.0))
    torch.testing.assert_close(out, torch.full((4, 3), 2.0) / math.sqrt(1 + bn.eps))  # eval: running stats


def test_ema_update_copies_integer_buffers_and_matches_a_per_tensor_update():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    student(torch.randn(5, 4))  # num_batches_tracked = 1, running stats moved
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.data.uniform_()
    expected = {n: 0.99 * p + 0.01 * dict(student.named_parameters())[n] for n, p in teacher.named_parameters()}
    student(torch.randn(5, 4))
    ema_update(teacher, student, 0.99)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, expected[name])
    assert int(teacher[1].num_batches_tracked) == 2
