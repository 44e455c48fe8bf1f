"""Cartoon faces drawn with OpenCV primitives that the frontal-face Haar cascade detects
(checked against OpenCV 4.14's CascadeClassifier, see test_sdk_faces.py)."""
from __future__ import annotations

import cv2
import numpy as np


def draw_face(size: int = 256, cx: float = 128, cy: float = 128, scale: float = 1.0,
              background=(90, 110, 130), noise_seed: int | None = 0, width: int | None = None) -> np.ndarray:
    """An RGB uint8 image (size x width) with one face of about 125*scale px across."""
    img = np.zeros((size, width or size, 3), np.uint8)
    img[:] = background
    if noise_seed is not None:
        noise = np.random.default_rng(noise_seed).integers(-8, 9, img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)

    def at(x, y):
        return int(cx + x * scale), int(cy + y * scale)

    def r(v):
        return max(1, int(v * scale))

    cv2.ellipse(img, at(0, 0), (r(62), r(80)), 0, 0, 360, (205, 170, 150), -1, cv2.LINE_AA)
    cv2.ellipse(img, at(0, -70), (r(66), r(30)), 0, 180, 360, (40, 30, 25), -1, cv2.LINE_AA)
    for side in (-1, 1):
        cv2.ellipse(img, at(side * 25, -22), (r(16), r(5)), 0, 180, 360, (60, 45, 40), r(3), cv2.LINE_AA)
        cv2.ellipse(img, at(side * 25, -5), (r(13), r(7)), 0, 0, 360, (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(img, at(side * 25, -5), r(6), (40, 30, 30), -1, cv2.LINE_AA)
    cv2.line(img, at(0, 0), at(-6, 25), (150, 110, 100), r(3), cv2.LINE_AA)
    cv2.ellipse(img, at(0, 40), (r(22), r(8)), 0, 0, 360, (120, 50, 60), -1, cv2.LINE_AA)
    return img
