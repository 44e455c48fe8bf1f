"""Motion between the DRIVER and GENERATOR graphs: relative or absolute, optionally smoothed.

A motion is a head pose theta (N, 3, 4: rotation and scale with translation) and an expression
code z (N, Z). Relative motion transfers the driver's *change* since its first frame onto the
source's own pose and expression (docs/design.md, "Data flow"):

    pose       = theta_d * theta_d0^-1 * theta_s     (4x4 homogeneous products)
    expression = z_s + (z_d - z_d0)

so a driver that has not moved reproduces the source exactly, whoever the driver is. Absolute
motion uses the driver's (theta_d, z_d) as they are.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .errors import MegaportraitsError

MOTION_MODES = ("relative", "absolute")


class Motion(NamedTuple):
    pose: np.ndarray        # (N, 3, 4) float32
    expression: np.ndarray  # (N, Z) float32


def homogeneous(pose: np.ndarray) -> np.ndarray:
    """(N, 3, 4) -> (N, 4, 4) with the row (0, 0, 0, 1) appended."""
    n = pose.shape[0]
    bottom = np.zeros((n, 1, 4), pose.dtype)
    bottom[:, 0, 3] = 1
    return np.concatenate([pose, bottom], axis=1)


class RelativeMotion:
    """Fixes the driver's first frame and the source; maps each later driver motion.

    Everything that does not change per frame, theta_d0^-1 * theta_s and z_s - z_d0, is
    computed once here (in float64), so a frame costs one small matrix product and one add.
    """

    #: a pose whose 3x3 part is this close to singular has no usable inverse
    MIN_CONDITION = 1e-8

    def __init__(self, source: Motion, driver_first: Motion):
        first = homogeneous(driver_first.pose.astype(np.float64))
        singular = [np.linalg.cond(m[:3, :3]) * self.MIN_CONDITION > 1 for m in first]
        if any(singular) or not np.isfinite(first).all():
            raise MegaportraitsError("the driver graph's head pose for the reference (first) frame is singular "
                                     "(its rotation-and-scale part has no inverse), so relative motion cannot "
                                     "be computed; the driver model is broken, or use absolute motion")
        inverse_first = np.linalg.inv(first)
        self._pose_tail = inverse_first @ homogeneous(source.pose.astype(np.float64))
        self._expression_offset = (source.expression.astype(np.float64)
                                   - driver_first.expression.astype(np.float64))

    def __call__(self, driver: Motion) -> Motion:
        pose = (homogeneous(driver.pose.astype(np.float64)) @ self._pose_tail)[:, :3, :]
        expression = driver.expression + self._expression_offset
        return Motion(pose.astype(np.float32), expression.astype(np.float32))


class OneEuroFilter:
    """The One-Euro filter (Casiez et al., CHI 2012) on arrays, element-wise.

    A low-pass filter whose cutoff rises with the signal's speed: still heads are smoothed
    hard (no jitter), fast moves pass with little lag. ``min_cutoff`` (Hz) sets the smoothing
    at rest, ``beta`` how quickly the cutoff opens with speed.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.3, derivative_cutoff: float = 1.0):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.derivative_cutoff = derivative_cutoff
        self.reset()

    def reset(self) -> None:
        self._value = None
        self._speed = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, value: np.ndarray, dt: float) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self._value is None:
            self._value, self._speed = value.copy(), np.zeros_like(value)
            return value
        speed = (value - self._value) / dt
        a_d = self._alpha(self.derivative_cutoff, dt)
        self._speed = self._speed + a_d * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        a = self._alpha(cutoff, dt)
        self._value = self._value + a * (value - self._value)
        return self._value


class MotionSmoother:
    """One-Euro filters on the driver's pose and expression, fed at the driver's frame rate.

    The first frame passes unchanged, so relative motion still starts exactly at the source.
    """

    def __init__(self, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.3):
        if not (math.isfinite(fps) and fps > 0):
            raise MegaportraitsError(f"smoothing needs a positive, finite frame rate, not {fps!r}")
        self.dt = 1.0 / fps
        self._pose = OneEuroFilter(min_cutoff, beta)
        self._expression = OneEuroFilter(min_cutoff, beta)

    def __call__(self, motion: Motion) -> Motion:
        return Motion(self._pose(motion.pose, self.dt).astype(np.float32),
                      self._expression(motion.expression, self.dt).astype(np.float32))
