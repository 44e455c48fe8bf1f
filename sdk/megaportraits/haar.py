"""A Haar-cascade face detector in numpy: OpenCV's frontal-face cascade without OpenCV's class.

OpenCV 5 dropped ``cv2.CascadeClassifier`` from the main modules (it now lives in contrib), and
its wheels no longer ship the cascades, so the SDK carries the classic cascade file
(data/haarcascade_frontalface_default.xml, Intel License, kept with its notice) and evaluates
it here, following OpenCV 4's ``detectMultiScale``: an image pyramid with a 24x24 window,
variance-normalised Haar features, boosted stump stages, then the same neighbour grouping.

Speed comes from evaluating whole stages at once: every scale of the pyramid is stored in one
integral-image buffer of a common row stride, so a rectangle's four corners are the same flat
offsets at every scale and window, and a stage is a handful of gathers over all candidates.

Thread-safe: the compiled stages are cached per stride in a dict filled under a lock and
read-only afterwards, and everything else a detection needs is local to the call, so one
cascade (one Animator) serves any number of threads.
"""
from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_CASCADE = Path(__file__).with_name("data") / "haarcascade_frontalface_default.xml"
_MIN_STDDEV = 10.0      # OpenCV skips windows whose grey-level stddev is below 10: nothing to see
_CHUNK = 16384          # windows evaluated together; bounds the gather buffers to a few MB


@dataclass(frozen=True)
class _Stage:
    threshold: float
    offsets: np.ndarray      # (K * R * 4,) flat corner offsets for K stumps of R rectangles
    weights: np.ndarray      # (K, R) rectangle weights (0 for absent third rectangles)
    thresholds: np.ndarray   # (K,)
    left: np.ndarray         # (K,) stump value when feature < threshold * norm
    right: np.ndarray        # (K,)


class HaarCascade:
    """A parsed stump-based cascade, ready to evaluate on grayscale images."""

    def __init__(self, path: str | Path = DEFAULT_CASCADE):
        root = ET.parse(path).getroot().find("cascade")
        if root is None or root.findtext("featureType", "").strip() != "HAAR":
            raise ValueError(f"{path} is not an OpenCV Haar cascade")
        self.window = (int(root.findtext("width")), int(root.findtext("height")))
        self._rects = [self._read_rects(f) for f in root.find("features")]
        self._stages_xml = [self._read_stage(s) for s in root.find("stages")]
        self._compiled: dict[int, tuple] = {}  # stride -> stages compiled for it (read-only)
        self._lock = threading.Lock()

    @staticmethod
    def _read_rects(feature) -> list[tuple[int, int, int, int, float]]:
        if feature.findtext("tilted", "0").strip() not in ("0", ""):
            raise ValueError("tilted Haar features are not supported")
        rects = []
        for r in feature.find("rects"):
            x, y, w, h, weight = r.text.split()
            rects.append((int(x), int(y), int(w), int(h), float(weight)))
        return rects

    @staticmethod
    def _read_stage(stage) -> tuple[float, list]:
        stumps = []
        for weak in stage.find("weakClassifiers"):
            nodes = weak.findtext("internalNodes").split()
            if len(nodes) != 4:
                raise ValueError("only stump (depth-1) cascades are supported")
            leaves = weak.findtext("leafValues").split()
            stumps.append((int(nodes[2]), float(nodes[3]), float(leaves[0]), float(leaves[1])))
        return float(stage.findtext("stageThreshold")), stumps

    def _compile(self, stride: int) -> tuple:
        """Every stage's rectangles as flat offsets for integral images of this stride (cached:
        a video's frames share one stride)."""
        stages = self._compiled.get(stride)
        if stages is not None:
            return stages
        with self._lock:
            if stride not in self._compiled:
                if len(self._compiled) >= 16:  # frames of many sizes: keep the cache small
                    self._compiled.clear()
                self._compiled[stride] = self._compile_stages(stride)
            return self._compiled[stride]

    def _compile_stages(self, stride: int) -> tuple:
        compiled = []
        for threshold, stumps in self._stages_xml:
            k = len(stumps)
            offsets = np.zeros((k, 3, 4), np.int64)
            weights = np.zeros((k, 3), np.float32)
            for i, (feature, _, _, _) in enumerate(stumps):
                for j, (x, y, w, h, weight) in enumerate(self._rects[feature]):
                    offsets[i, j] = (y * stride + x, y * stride + x + w,
                                     (y + h) * stride + x, (y + h) * stride + x + w)
                    weights[i, j] = weight
            stumps_arr = np.array([s[1:] for s in stumps], np.float32)
            compiled.append(_Stage(threshold, offsets.reshape(-1), weights,
                                   stumps_arr[:, 0], stumps_arr[:, 1], stumps_arr[:, 2]))
        return tuple(compiled)

    def detect(self, gray: np.ndarray, scale_factor: float = 1.1, min_neighbors: int = 3,
               min_size: int = 0, max_size: int | None = None) -> np.ndarray:
        """Face boxes (N, 4) as x, y, w, h in ``gray``'s pixels, like OpenCV's detectMultiScale."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("HaarCascade.detect takes a 2-D uint8 grayscale image")
        height, width = gray.shape
        win_w, win_h = self.window
        stride = width + 1
        layers, factor = [], 1.0
        while (round(width / factor) >= win_w + 1 and round(height / factor) >= win_h + 1
               and (max_size is None or round(win_w * factor) <= max_size)):
            if round(win_w * factor) >= min_size:
                layers.append(factor)
            factor *= scale_factor
        if not layers:
            return np.zeros((0, 4), np.int32)
        total_rows = sum(round(height / f) + 1 for f in layers)
        integral = np.zeros((total_rows, stride), np.int32)
        squares = np.zeros((total_rows, stride), np.float64)
        bases, origins = [], []
        row = 0
        for factor in layers:
            size = (round(width / factor), round(height / factor))
            scaled = gray if factor == 1.0 else cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR)
            s, sq = cv2.integral2(scaled, sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F)
            integral[row:row + size[1] + 1, :size[0] + 1] = s
            squares[row:row + size[1] + 1, :size[0] + 1] = sq
            step = 1 if factor > 2.0 else 2
            ys, xs = np.mgrid[0:size[1] - win_h + 1:step, 0:size[0] - win_w + 1:step]
            bases.append(((ys + row) * stride + xs).reshape(-1))
            origins.append(np.stack([xs.reshape(-1) * factor, ys.reshape(-1) * factor,
                                     np.full(xs.size, factor)], axis=1))
            row += size[1] + 1
        stages = self._compile(stride)
        base = np.concatenate(bases)
        origin = np.concatenate(origins)
        keep = np.concatenate([i + self._run(stages, stride, integral.reshape(-1), squares.reshape(-1),
                                             base[i:i + _CHUNK])
                               for i in range(0, base.size, _CHUNK)])
        hits = origin[keep]
        boxes = np.stack([np.round(hits[:, 0]), np.round(hits[:, 1]),
                          np.round(win_w * hits[:, 2]), np.round(win_h * hits[:, 2])], axis=1)
        return group_rectangles(boxes.astype(np.int64), min_neighbors)

    def _run(self, stages: tuple, stride: int, integral: np.ndarray, squares: np.ndarray,
             base: np.ndarray) -> np.ndarray:
        """Indices into ``base`` of the windows that pass every stage."""
        win_w, win_h = self.window
        norm = np.array([stride + 1, stride + win_w - 1, (win_h - 1) * stride + 1,
                         (win_h - 1) * stride + win_w - 1])
        area = float((win_w - 2) * (win_h - 2))
        s = _corner_sums(integral, base, norm).astype(np.float64)
        sq = _corner_sums(squares, base, norm)
        nf = area * sq - s * s
        alive = np.sqrt(np.maximum(nf, 0.0)) > _MIN_STDDEV * area
        index = np.nonzero(alive)[0]
        nf = np.sqrt(nf[index]).astype(np.float32)
        for stage in stages:
            if index.size == 0:
                break
            corners = np.take(integral, base[index][:, None] + stage.offsets[None, :])
            corners = corners.reshape(index.size, -1, 3, 4)
            rect_sums = (corners[..., 0] - corners[..., 1] - corners[..., 2] + corners[..., 3])
            feature = np.einsum("nkr,kr->nk", rect_sums.astype(np.float32), stage.weights)
            votes = np.where(feature < stage.thresholds * nf[:, None], stage.left, stage.right)
            passed = votes.sum(axis=1) >= stage.threshold
            index, nf = index[passed], nf[passed]
        return index


def _corner_sums(table: np.ndarray, base: np.ndarray, corners: np.ndarray) -> np.ndarray:
    c = np.take(table, base[:, None] + corners[None, :])
    return c[:, 0] - c[:, 1] - c[:, 2] + c[:, 3]


def group_rectangles(boxes: np.ndarray, min_neighbors: int, eps: float = 0.2) -> np.ndarray:
    """OpenCV's groupRectangles: cluster similar boxes, keep clusters with more than
    ``min_neighbors`` members, average each, drop small clusters inside stronger ones."""
    n = len(boxes)
    if n == 0 or min_neighbors <= 0:
        return boxes.reshape(-1, 4).astype(np.int32)
    labels = _partition(boxes, eps)
    clusters = []
    for label in np.unique(labels):
        members = boxes[labels == label]
        if len(members) > min_neighbors:
            clusters.append((np.round(members.mean(axis=0)).astype(np.int64), len(members)))
    kept = []
    for i, (r1, n1) in enumerate(clusters):
        inside = False
        for j, (r2, n2) in enumerate(clusters):
            if i == j:
                continue
            dx, dy = int(r2[2] * eps), int(r2[3] * eps)
            if (r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                    and r1[1] + r1[3] <= r2[1] + r2[3] + dy and (n2 > max(3, n1) or n1 < 3)):
                inside = True
                break
        if not inside:
            kept.append(r1)
    return np.array(kept, np.int32).reshape(-1, 4)


def _partition(boxes: np.ndarray, eps: float) -> np.ndarray:
    """Connected components of the 'similar box' relation (union-find)."""
    x, y, w, h = boxes.T.astype(np.float64)
    delta = eps * (np.minimum(w[:, None], w[None]) + np.minimum(h[:, None], h[None])) * 0.5
    similar = ((np.abs(x[:, None] - x[None]) <= delta) & (np.abs(y[:, None] - y[None]) <= delta)
               & (np.abs((x + w)[:, None] - (x + w)[None]) <= delta)
               & (np.abs((y + h)[:, None] - (y + h)[None]) <= delta))
    parent = list(range(len(boxes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(similar, 1))):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[rj] = ri
    return np.array([find(i) for i in range(len(boxes))])
