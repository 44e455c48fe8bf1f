"""The One-Euro filter against a scalar transcription of Casiez et al.'s algorithm (CHI 2012),
on signals whose speed changes, so the adaptive cutoff (beta > 0) decides the output."""
from __future__ import annotations

import math

import numpy as np
import pytest

from megaportraits.motion import Motion, MotionSmoother, OneEuroFilter


def one_euro_reference(samples, dt, min_cutoff, beta, derivative_cutoff):
    """The paper's pseudo-code for one scalar signal: the speed is the change of the raw sample
    from the previous *filtered* value, low-passed at ``derivative_cutoff``; the value's cutoff
    is ``min_cutoff + beta * |filtered speed|``; the first sample passes unchanged."""
    def alpha(cutoff):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    out, value, speed = [], None, 0.0
    for x in samples:
        if value is None:
            value = x
        else:
            speed = speed + alpha(derivative_cutoff) * ((x - value) / dt - speed)
            value = value + alpha(min_cutoff + beta * abs(speed)) * (x - value)
        out.append(value)
    return out


def signals(steps=60, seed=0):
    """(steps, 3): still then jumping, a fast ramp, and noise around zero."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    still_then_jump = np.where(t < steps // 2, 0.0, 2.0) + 0.01 * rng.standard_normal(steps)
    ramp = 0.25 * t
    noise = 0.05 * rng.standard_normal(steps)
    return np.stack([still_then_jump, ramp, noise], axis=1)


@pytest.mark.parametrize("min_cutoff,beta,derivative_cutoff", [(1.0, 0.7, 1.0), (0.5, 2.0, 3.0), (1.5, 0.0, 1.0)])
def test_element_wise_filter_equals_the_scalar_algorithm(min_cutoff, beta, derivative_cutoff):
    dt = 1 / 30
    x = signals()
    f = OneEuroFilter(min_cutoff=min_cutoff, beta=beta, derivative_cutoff=derivative_cutoff)
    got = np.stack([f(row, dt) for row in x])
    for k in range(x.shape[1]):
        expected = one_euro_reference(x[:, k], dt, min_cutoff, beta, derivative_cutoff)
        np.testing.assert_allclose(got[:, k], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[0], x[0])


def test_the_cutoff_opens_with_speed():
    """On a fast ramp beta > 0 lags far less than beta = 0; at rest both smooth alike."""
    dt = 1 / 30
    ramp = 0.25 * np.arange(60.0)
    lag = {}
    for beta in (0.0, 1.0):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        lag[beta] = ramp[-1] - [f(np.array([v]), dt) for v in ramp][-1][0]
    # by hand, beta = 0: alpha = 1 / (1 + 30 / (2 pi)) = 0.173; the steady lag of a ramp of slope
    # 0.25 per step is 0.25 (1 - alpha) / alpha = 1.19
    assert lag[0.0] == pytest.approx(0.25 * (1 - 0.1732) / 0.1732, rel=0.01)
    assert lag[1.0] < 0.25 * lag[0.0]
    still = np.full(10, 3.0)
    for beta in (0.0, 1.0):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        assert [f(np.array([v]), dt)[0] for v in still] == [3.0] * 10


def test_reset_forgets_the_past():
    f = OneEuroFilter(beta=0.5)
    for v in (0.0, 1.0, 5.0):
        f(np.array([v]), 0.1)
    f.reset()
    assert f(np.array([-2.0]), 0.1)[0] == -2.0


def test_motion_smoother_filters_pose_and_expression_at_the_frame_rate():
    rng = np.random.default_rng(1)
    motions = [Motion(rng.standard_normal((1, 3, 4)).astype(np.float32),
                      rng.standard_normal((1, 5)).astype(np.float32)) for _ in range(8)]
    smoother = MotionSmoother(fps=25.0, min_cutoff=0.8, beta=0.4)
    out = [smoother(m) for m in motions]
    np.testing.assert_array_equal(out[0].pose, motions[0].pose)
    np.testing.assert_array_equal(out[0].expression, motions[0].expression)
    for field in ("pose", "expression"):
        series = np.stack([getattr(m, field).astype(np.float64).ravel() for m in motions])
        for k in range(series.shape[1]):
            expected = one_euro_reference(series[:, k], 1 / 25.0, 0.8, 0.4, 1.0)
            got = [getattr(o, field).ravel()[k] for o in out]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert all(getattr(o, field).dtype == np.float32 for o in out)
