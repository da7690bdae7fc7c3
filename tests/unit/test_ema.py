import copy

import pytest
import torch

from models.ema import ema_beta, recalibrate_batchnorm, update_ema


def test_half_life():
    beta = ema_beta(batch=100, cur_nimg=10**9, half_life_kimg=1.0, rampup=None)
    assert beta ** 10 == pytest.approx(0.5)  # 10 steps of 100 images = one half-life


def test_rampup_caps_half_life_early():
    early = ema_beta(batch=100, cur_nimg=1000, half_life_kimg=10.0, rampup=0.05)  # half-life 50 imgs
    assert early == pytest.approx(0.5 ** 2)
    assert ema_beta(100, 10**9, 10.0, 0.05) == pytest.approx(0.5 ** (100 / 10000))


def test_zero_half_life_copies():
    assert ema_beta(64, 1000, 0.0, None) == 0.0


def test_update_math_and_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = copy.deepcopy(net)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(7.0)
    update_ema(ema, net, beta=0.9)
    for b, p_ema, p in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * b + 0.1 * p)
    assert torch.equal(ema[1].running_mean, torch.full((3,), 7.0))


def test_recalibrate_batchnorm_averages_over_the_inputs_and_keeps_mode_and_momentum():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, momentum=0.3)).eval()
    net[1].running_mean.fill_(5.0)  # stale statistics, as G's copied into G_ema
    batches = [torch.randn(32, 3) * (i + 1) + i for i in range(4)]  # batches with different statistics
    recalibrate_batchnorm(net, ((x,) for x in batches))
    with torch.no_grad():
        h = [net[0](x) for x in batches]
    # momentum None: the plain average of the per-batch mean and (unbiased) variance
    torch.testing.assert_close(net[1].running_mean, torch.stack([x.mean(0) for x in h]).mean(0))
    torch.testing.assert_close(net[1].running_var, torch.stack([x.var(0) for x in h]).mean(0))
    assert not net.training and net[1].momentum == 0.3


def test_recalibrate_batchnorm_without_batch_norm_leaves_the_net_alone():
    net = torch.nn.Linear(3, 3)
    before = copy.deepcopy(net.state_dict())
    recalibrate_batchnorm(net, [(torch.randn(4, 3),)])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
