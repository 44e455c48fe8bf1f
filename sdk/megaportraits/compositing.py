"""Background compositing for models that predict a foreground matte.

MegaPortraits computes its losses on the person only and composites the background afterwards
(matting + inpainting). A matte model's generator renders the person and a matte (1 = head, hair,
neck, shoulders; 0 = backdrop); its colours mean nothing where the matte is 0. This module gives
that rendering a background: the source photo's own backdrop with the person removed.

Layout, for both functions: channel-first float32 in [0, 1], like the graphs' tensors, so the
SDK composites ONNX Runtime's outputs and the training side its tensors (``.numpy()``) without a
transpose. Colours are (..., 3, S, S) and mattes (..., 1, S, S); the leading axes are optional.
"""
from __future__ import annotations

import cv2
import numpy as np

#: matte values above this count as the person when cutting it out of the source
PERSON_THRESHOLD = 0.05
#: the person's cut-out grows by this fraction of the image size: a matte's soft edge and the
#: hair it misses still carry the person's colours, which inpainting would otherwise spread
DILATION = 1 / 64
#: the inpainting neighbourhood, as a fraction of the image size (4 px at 256)
INPAINT_RADIUS = 1 / 64
_INPAINT_SCALE = 65535.0


def background_plate(source: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The source crop with the person removed: the backdrop a driven head is composited onto.

    When the driver turns or moves the head, it uncovers backdrop that the source photo never
    showed; it has to come from somewhere, and the source's own backdrop is the best guess we
    have. So the person (where a slightly dilated ``matte`` exceeds :data:`PERSON_THRESHOLD`) is
    filled by inpainting from its surroundings (Telea's method), and every other pixel is the
    source's exactly: a static background stays pixel-exact in the animation.

    ``source``: (3, S, S) float32 in [0, 1], the source crop. ``matte``: (1, S, S) float32 in
    [0, 1], the model's matte of the source re-rendered with its own motion (so it matches what
    the model thinks is the person). Returns a new (3, S, S) float32 array; mid-grey where the
    person covers the whole crop (no backdrop to inpaint from). Computed once per avatar (tens
    of milliseconds at 256 px), not per frame.
    """
    size = _check_pair(source, matte, "source", "matte")
    plate = np.array(source, dtype=np.float32)
    cut = np.ascontiguousarray(matte[0] > PERSON_THRESHOLD, dtype=np.uint8)
    grow = max(1, round(size * DILATION))
    cut = cv2.dilate(cut, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    person = cut.astype(bool)
    if not person.any():
        return plate
    if person.all():  # nothing to inpaint from: a plain grey backdrop rather than a guess
        plate[:] = 0.5
        return plate
    # OpenCV's Telea adds to every filled pixel a term of up to sqrt(2) intensity units whatever
    # the image's range (in 8 bits: stripes of several levels on a flat wall; in [0, 1]: garbage).
    # On one float channel at a 16-bit scale that term is below 1e-4. Only the filled pixels are
    # taken from it: the rest keeps the source's values exactly.
    radius = max(1, round(size * INPAINT_RADIUS))
    for channel in plate:
        filled = cv2.inpaint(channel * np.float32(_INPAINT_SCALE), cut, radius, cv2.INPAINT_TELEA)
        channel[person] = np.clip(filled[person] * np.float32(1 / _INPAINT_SCALE), 0.0, 1.0)
    return plate


def composite(image: np.ndarray, matte: np.ndarray, plate: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """``matte * image + (1 - matte) * plate``: the rendered person over the backdrop.

    ``image`` (..., 3, S, S) and ``matte`` (..., 1, S, S), float (a generator's outputs, e.g.
    (1, 3, S, S) from ONNX Runtime or a training batch (N, 3, S, S)); ``plate`` (3, S, S) or
    anything that broadcasts, e.g. (N, 3, S, S) for a batch of different sources. Where the
    matte is exactly 1 the result is the image exactly, where it is 0 the plate exactly.

    Returns float32, written into ``out`` when given (a per-frame caller keeps one buffer and
    the only temporary is one frame's ``(1 - matte) * plate``).
    """
    if image.shape[-3:-2] != (3,) or matte.shape[-3:-2] != (1,) or image.shape[-2:] != matte.shape[-2:]:
        raise ValueError(f"composite needs image (..., 3, S, S) and matte (..., 1, S, S), "
                         f"got {image.shape} and {matte.shape}")
    if plate.shape[-3:] != image.shape[-3:]:
        raise ValueError(f"composite needs a plate of shape (3, S, S) = {image.shape[-3:]}, got {plate.shape}")
    out = np.multiply(matte, image, out=out, dtype=np.float32)
    backdrop = np.subtract(np.float32(1), matte, dtype=np.float32)
    out += np.multiply(backdrop, plate, dtype=np.float32)
    return out


def _check_pair(source: np.ndarray, matte: np.ndarray, source_name: str, matte_name: str) -> int:
    if source.ndim != 3 or source.shape[0] != 3 or source.shape[1] != source.shape[2]:
        raise ValueError(f"{source_name} must be a channel-first square image (3, S, S), got shape {source.shape}")
    if matte.shape != (1,) + source.shape[1:]:
        raise ValueError(f"{matte_name} must have shape (1, S, S) = {(1,) + source.shape[1:]}, got {matte.shape}")
    return source.shape[1]
