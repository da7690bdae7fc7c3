import math

import pytest
import torch

from pipeline.config import HealthConfig
from pipeline.health import HealthMonitor, diversity


def _healthy_losses(n, seed=0):
    """Logistic-loss-like series: D around 1.2, G around 0.9, noisy, no trend."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 2, generator=g) * 0.1
    return [(1.2 + a, 0.9 + b) for a, b in noise.tolist()]


def _feed(mon, series, start=0):
    return [mon.check_losses(start + i, d, gl) for i, (d, gl) in enumerate(series)]


def test_healthy_series_raises_nothing():
    mon = HealthMonitor(policy="stop", window=20)
    assert all(d.ok for d in _feed(mon, _healthy_losses(200)))
    feats = torch.Generator().manual_seed(1)
    for step in range(30):
        batch = torch.randn(64, 16, generator=feats) * (1 + 0.05 * math.sin(step))
        assert mon.check_diversity(step, batch).ok


@pytest.mark.parametrize("where", ["d", "g", "extra"])
def test_non_finite_is_divergence(where):
    mon = HealthMonitor(policy="stop")
    _feed(mon, _healthy_losses(10))
    d, g, extra = 1.0, 1.0, {"G_main/grad_norm": 3.0}
    if where == "d":
        d = float("nan")
    elif where == "g":
        g = float("inf")
    else:
        extra["G_main/grad_norm"] = float("nan")
    dec = mon.check_losses(11, d, g, extra=extra)
    assert dec.action == "stop" and dec.problem == "divergence" and "non-finite" in dec.reason


def test_skipped_steps_are_divergence():
    mon = HealthMonitor(policy="warn", max_skipped=0.5)
    assert mon.check_losses(1, 1.0, 1.0, skipped=0.2).ok
    dec = mon.check_losses(2, 1.0, 1.0, skipped=0.6)
    assert dec.action == "warn" and dec.problem == "divergence" and "skipped" in dec.reason


def test_d_collapsing_while_g_climbs_is_divergence():
    mon = HealthMonitor(policy="stop", window=20, d_floor=0.05, g_rise=1.0)
    decisions = _feed(mon, _healthy_losses(30))
    # D's loss falls to ~0 and G's loss climbs: D separates real from fake perfectly.
    blowup = [(1.2 * 0.7 ** i, 0.9 + 0.3 * i) for i in range(30)]
    decisions += _feed(mon, blowup, start=30)
    first_bad = next(i for i, d in enumerate(decisions) if not d.ok)
    assert 30 + 10 <= first_bad < 60
    assert decisions[first_bad].problem == "divergence" and "D loss" in decisions[first_bad].reason


def test_losses_blowing_up_is_divergence():
    mon = HealthMonitor(policy="warn", window=6, max_loss=50)
    _feed(mon, _healthy_losses(6))
    decisions = _feed(mon, [(300.0, 80.0)] * 3, start=6)
    assert decisions[-1].action == "warn" and "blew up" in decisions[-1].reason
    off = HealthMonitor(policy="stop", window=6, max_loss=0)
    assert all(d.ok for d in _feed(off, [(300.0, 80.0)] * 12))


def test_d_near_zero_alone_or_g_rising_alone_is_fine():
    mon = HealthMonitor(policy="stop", window=20)
    assert all(d.ok for d in _feed(mon, [(0.01, 5.0)] * 40))            # flat G: D just strong
    mon = HealthMonitor(policy="stop", window=20)
    assert all(d.ok for d in _feed(mon, [(1.0, 0.5 + 0.2 * i) for i in range(40)]))  # D still learning
    mon = HealthMonitor(policy="stop", window=20, d_floor=0.0)          # the wgan setting: rule off
    assert all(d.ok for d in _feed(mon, [(1e-4 * 0.5 ** i, 0.3 * i) for i in range(40)]))


def test_each_window_rule_has_its_own_off_switch():
    # d_floor 0 turns off the D-wins rule only: losses far above max_loss are still divergence,
    # and only once the window is full.
    mon = HealthMonitor(policy="warn", window=6, d_floor=0.0, max_loss=50)
    decisions = _feed(mon, [(300.0, 80.0)] * 6)
    assert all(d.ok for d in decisions[:5])
    assert decisions[5].action == "warn" and decisions[5].problem == "divergence"
    assert "blew up" in decisions[5].reason
    # max_loss 0 turns off the blow-up rule only: D collapsing while G climbs is still divergence.
    mon = HealthMonitor(policy="stop", window=20, d_floor=0.05, g_rise=1.0, max_loss=0)
    decisions = _feed(mon, _healthy_losses(30))
    decisions += _feed(mon, [(1.2 * 0.7 ** i, 0.9 + 0.3 * i) for i in range(30)], start=30)
    bad = [d for d in decisions if not d.ok]
    assert bad and bad[0].problem == "divergence" and "D loss" in bad[0].reason
    # Both off (the wgan-gp setting): neither pattern is flagged.
    mon = HealthMonitor(policy="stop", window=6, d_floor=0.0, max_loss=0)
    assert all(d.ok for d in _feed(mon, [(300.0, 80.0)] * 12 + [(1e-4, 0.5 * i) for i in range(12)]))


def test_blow_up_rule_waits_for_a_full_window_after_a_rollback():
    mon = HealthMonitor(policy="rollback", window=6, d_floor=0.0, max_loss=50, max_rollbacks=3)
    decisions = _feed(mon, [(300.0, 80.0)] * 12)
    assert [i for i, d in enumerate(decisions) if not d.ok] == [5, 11]
    assert all(decisions[i].action == "rollback" for i in (5, 11))


def test_diversity_collapse_is_mode_collapse():
    mon = HealthMonitor(policy="warn", collapse_ratio=0.3, warmup=3)
    g = torch.Generator().manual_seed(2)
    for step in range(10):
        assert mon.check_diversity(step, torch.randn(64, 16, generator=g)).ok
    base = mon.baseline
    assert base == pytest.approx(diversity(torch.randn(4096, 16)), rel=0.1)
    # Every latent maps to nearly one image.
    collapsed = torch.randn(1, 16, generator=g) + 0.01 * torch.randn(64, 16, generator=g)
    dec = mon.check_diversity(10, collapsed)
    assert dec.action == "warn" and dec.problem == "mode_collapse"
    assert mon.baseline == base  # a collapsed reading does not drag the baseline down
    nan = torch.full((64, 16), float("nan"))
    assert mon.check_diversity(11, nan).problem == "divergence"


def test_rollback_policy_lowers_lr_then_stops():
    mon = HealthMonitor(policy="rollback", lr_scale=0.5, max_rollbacks=2)
    for i in range(2):
        dec = mon.check_losses(i, float("nan"), 1.0)
        assert dec.action == "rollback" and dec.lr_scale == 0.5 and f"rollback {i + 1}/2" in dec.reason
    dec = mon.check_losses(3, float("nan"), 1.0)
    assert dec.action == "stop" and "after 2 rollbacks" in dec.reason and dec.lr_scale == 1.0


def test_rollback_clears_the_loss_window():
    mon = HealthMonitor(policy="rollback", window=4, g_rise=0.5)
    decisions = _feed(mon, [(0.01, 1.0), (0.01, 1.0), (0.01, 2.0), (0.01, 2.0)])
    assert decisions[-1].action == "rollback"
    # The restored run reports healthy-looking numbers: the old window must not re-trigger.
    assert all(d.ok for d in _feed(mon, [(0.01, 2.0)] * 3))


def test_policy_and_window_are_validated():
    with pytest.raises(ValueError, match="policy"):
        HealthMonitor(policy="panic")
    with pytest.raises(ValueError, match="window"):
        HealthMonitor(window=2)


def test_from_config():
    mon = HealthMonitor.from_config(HealthConfig(policy="rollback", window=8, max_rollbacks=1))
    assert (mon.policy, mon.window, mon.max_rollbacks) == ("rollback", 8, 1)


def test_a_generator_collapsed_from_the_start_is_flagged_against_the_real_data():
    """The baseline rule learns 'normal' from the run's own first readings: a G that is collapsed
    by then sets a collapsed baseline and is never flagged. The real data's diversity is known
    from the start."""
    g = torch.Generator().manual_seed(3)
    collapsed = [torch.randn(1, 16, generator=g) + 0.01 * torch.randn(64, 16, generator=g) for _ in range(6)]
    real = diversity(torch.randn(64, 16, generator=g))
    baseline_only = HealthMonitor(policy="warn", warmup=3)
    assert all(baseline_only.check_diversity(step, x, real).ok for step, x in enumerate(collapsed))
    mon = HealthMonitor(policy="warn", warmup=3, real_ratio=0.3)
    assert mon.check_diversity(0, collapsed[0], real).ok   # one low reading: a G may pass through it
    assert mon.last_diversity == pytest.approx(diversity(collapsed[0]))
    second = mon.check_diversity(1, collapsed[1], real)
    assert second.problem == "mode_collapse" and "the real data's" in second.reason
    assert "in 2 readings in a row" in second.reason
    at_once = HealthMonitor(policy="warn", warmup=3, real_ratio=0.3, real_patience=1)
    assert at_once.check_diversity(0, collapsed[0], real).problem == "mode_collapse"
    # a healthy G is as diverse as the data and stays quiet, with or without a reading of it
    healthy = HealthMonitor(policy="warn", warmup=3, real_ratio=0.3)
    assert all(healthy.check_diversity(step, torch.randn(64, 16, generator=g), real).ok for step in range(6))
    assert healthy.check_diversity(6, torch.randn(64, 16, generator=g), None).ok


def test_low_readings_count_only_in_a_row_and_per_space():
    mon = HealthMonitor(policy="warn", real_ratio=0.5)
    readings = [(0, 2.0, "pixels"), (1, 2.0, "classifier features"), (2, 9.0, "pixels"),
                (3, 2.0, "pixels"), (4, 9.0, "classifier features")]
    assert all(mon.check_real(step, v, 10.0, space).ok for step, v, space in readings)
    assert mon.check_real(5, 2.0, 10.0, "pixels").problem == "mode_collapse"
    assert HealthMonitor.from_config(HealthConfig(real_patience=3)).real_patience == 3


def test_a_generator_that_fills_few_of_the_datas_classes_is_mode_collapse():
    mon = HealthMonitor(policy="warn", class_ratio=0.5)
    assert mon.check_coverage(0, 10, 10).ok and mon.check_coverage(1, 5, 10).ok
    few = mon.check_coverage(2, 2, 10)
    assert few.problem == "mode_collapse" and "2 of the data's 10 classes" in few.reason
    assert HealthMonitor(policy="warn").check_coverage(3, 1, 10).ok   # class_ratio 0: the rule is off
    assert HealthMonitor.from_config(HealthConfig(class_ratio=0.7)).class_ratio == 0.7


def test_diversity_in_an_evaluations_feature_space_is_judged_against_the_real_datas():
    mon = HealthMonitor(policy="warn", real_ratio=0.5, real_patience=1)
    low = mon.check_real(4, 3.0, 10.0, "classifier features")
    assert low.problem == "mode_collapse" and "(classifier features)" in low.reason and "10" in low.reason
    assert mon.check_real(5, 6.0, 10.0, "classifier features").ok
    assert HealthMonitor(policy="warn").check_real(6, 0.1, 10.0, "classifier features").ok   # off at ratio 0


def test_a_conditional_generator_drawing_one_image_per_class_is_flagged_within_classes():
    """Across classes, one image per class is as far apart as the data; within a class the
    collapse shows."""
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(60) % 10
    centers = 3 * torch.randn(10, 16, generator=g)
    real = centers[labels] + torch.randn(60, 16, generator=g)
    one_per_class = centers[labels] + 0.01 * torch.randn(60, 16, generator=g)
    assert diversity(one_per_class) > 0.9 * diversity(real)
    assert diversity(one_per_class, labels) < 0.05 * diversity(real, labels)
    assert diversity(real, labels) == pytest.approx(torch.pdist(real[labels == 0]).mean().item(), rel=0.3)
    across = HealthMonitor(policy="warn", real_ratio=0.3, real_patience=1)
    assert across.check_diversity(0, one_per_class, diversity(real)).ok
    within = HealthMonitor(policy="warn", real_ratio=0.3, real_patience=1)
    dec = within.check_diversity(0, one_per_class, diversity(real, labels), labels)
    assert dec.problem == "mode_collapse" and within.last_diversity == pytest.approx(diversity(one_per_class, labels))
    healthy = HealthMonitor(policy="warn", real_ratio=0.3, real_patience=1)
    fresh = centers[labels] + torch.randn(60, 16, generator=g)
    assert healthy.check_diversity(0, fresh, diversity(real, labels), labels).ok
    # a class with a single sample has no pairs: it is left out, not a NaN
    assert math.isfinite(diversity(real[:11], labels[:11]))
