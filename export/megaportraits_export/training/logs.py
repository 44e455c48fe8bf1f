"""Training logs: TensorBoard event files (scalars, image grids) plus PNG copies of the grids.

Only rank 0 creates a ``RunLogger``; other ranks get ``NullLogger``, so nothing is written
twice. The PNG grids sit next to the event files so a run can be inspected without starting
TensorBoard (rows: samples; columns: source, driver, prediction, and for the cross-identity
pass source2 and its reenactment by the same driver).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def image_grid(columns: list, pad: int = 2) -> torch.Tensor:
    """Tile a list of (N, 3, H, W) batches into one (3, H', W') image: column j = batch j."""
    columns = [c.detach().float().clamp(0, 1).cpu() for c in columns]
    n, _, h, w = columns[0].shape
    grid = torch.ones(3, n * (h + pad) + pad, len(columns) * (w + pad) + pad)
    for j, column in enumerate(columns):
        for i in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top:top + h, left:left + w] = column[i]
    return grid


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Save a (3, H, W) float image in [0, 1] as an 8-bit RGB PNG."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


class RunLogger:
    def __init__(self, out_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = Path(out_dir)
        self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}{name}", float(value), step)

    def images(self, name: str, columns: list, step: int) -> Path:
        grid = image_grid(columns)
        self.writer.add_image(name, grid, step)
        path = self.out_dir / "images" / f"{name.replace('/', '_')}_{step:07d}.png"
        save_png(grid, path)
        return path

    def text(self, name: str, text: str, step: int = 0) -> None:
        self.writer.add_text(name, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NullLogger:
    """What non-zero ranks log: nothing."""

    def scalars(self, *args, **kwargs) -> None:
        pass

    def images(self, *args, **kwargs) -> None:
        return None

    def text(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
