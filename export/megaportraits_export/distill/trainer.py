"""The distillation loop: the student learns the teacher's renderings of its avatars.

Losses (the paper's where they exist offline): L1 on the image, the VGG19 perceptual term
(ImageNet weights when cached, else the documented fixed random VGG19 + multi-scale L1, see
:mod:`megaportraits_export.losses.perceptual`) and, for a matte teacher, L1 on the matte. The
paper's gaze and VGGFace terms have no weights here and its 4-scale adversarial term is left for
the long run; neither is needed to lower the distillation loss.

Batches depend only on (seed, step): step k draws the same (avatar, frame) pairs whatever
happened before, so a run resumed from its checkpoint takes exactly the steps an uninterrupted
run would have (with the optimizer's and the generators' states restored). The checkpoint is
written atomically every ``save_every`` steps and at the end; an interrupted run keeps the last
one. Progress: one line on stderr per ``log_every`` steps; TensorBoard scalars under
``OUT/tensorboard`` when tensorboard is installed. Under torchrun each process takes its share
of the batch and DistributedDataParallel averages the gradients; rank 0 alone writes.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaportraits_export.distill.targets import Targets
from megaportraits_export.networks.student import Student, build_student
from megaportraits_export.student_config import StudentConfig
from megaportraits_export.training import distributed
from megaportraits_export.training.loop import wrap_ddp
from megaportraits_export.training.state import capture_rng, restore_rng

CHECKPOINT = "student_checkpoint.pt"


@dataclass(frozen=True)
class DistillOptions:
    steps: int = 2000
    batch: int = 8
    lr: float = 2e-4
    avatar_lr: float = 1e-3         # the per-avatar SPADE tensors learn faster: each sees 1/A of the batches
    perceptual_weight: float = 1.0
    seed: int = 0
    save_every: int = 200
    log_every: int = 20
    vgg_weights: str = "auto"


def sample_batch(targets: Targets, step: int, batch: int, seed: int) -> tuple:
    """(avatar indices, frame indices) of step ``step``: a function of (seed, step) only."""
    rng = np.random.default_rng((seed, step))
    avatars, frames = targets.renderings.shape[:2]
    return rng.integers(0, avatars, batch), rng.integers(0, frames, batch)


def batch_tensors(targets: Targets, avatar_index: np.ndarray, frame_index: np.ndarray, device) -> tuple:
    """(driver images (B, 3, S, S), avatar index (B,), target (B, C, S, S)) as float in [0, 1]."""
    drivers = torch.from_numpy(targets.drivers[frame_index]).permute(0, 3, 1, 2).float().div_(255)
    wanted = torch.from_numpy(targets.renderings[avatar_index, frame_index]).permute(0, 3, 1, 2).float().div_(255)
    return drivers.to(device), torch.from_numpy(avatar_index.astype(np.int64)).to(device), wanted.to(device)


class DistillLoss(torch.nn.Module):
    def __init__(self, perceptual_weight: float, vgg_weights: str = "auto"):
        super().__init__()
        self.perceptual_weight = perceptual_weight
        self.perceptual = None
        if perceptual_weight > 0:
            from megaportraits_export.losses.perceptual import PerceptualLoss

            self.perceptual = PerceptualLoss(vgg_weights)

    def forward(self, rendering: torch.Tensor, target: torch.Tensor) -> dict:
        terms = {"l1": F.l1_loss(rendering[:, :3], target[:, :3])}
        if target.shape[1] == 4:
            terms["matte_l1"] = F.l1_loss(rendering[:, 3:], target[:, 3:])
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual_weight * self.perceptual(rendering[:, :3], target[:, :3])["perceptual"]
        terms["total"] = sum(terms.values())
        return terms


def make_optimizer(student: Student, options: DistillOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": student.shared_parameters(), "lr": options.lr},
                             {"params": student.avatar_parameters(), "lr": options.avatar_lr}], betas=(0.5, 0.999))


def save_checkpoint(path: Path, student: Student, optimizer, step: int, options: DistillOptions,
                    extra: dict | None = None) -> None:
    """Everything a resume needs, written atomically (an interrupted write leaves the old one)."""
    state = {"step": step, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
             "config": student.config.to_dict(), "options": asdict(options), "rng": capture_rng(),
             **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def distill(config: StudentConfig, targets: Targets, out: Path, options: DistillOptions,
            device: str = "auto", extra: dict | None = None) -> Student:
    """Train (or resume training of) a student on ``targets``; returns it, checkpoint in ``out``."""
    out = Path(out)
    ctx = distributed.setup(device)
    try:
        torch.manual_seed(options.seed)
        student = build_student(config).to(ctx.device)
        optimizer = make_optimizer(student, options)
        start = 0
        checkpoint = out / CHECKPOINT
        if checkpoint.is_file():
            state = torch.load(checkpoint, map_location=ctx.device, weights_only=False)
            if StudentConfig.from_dict(state["config"]) != config:
                raise ValueError(f"{checkpoint} holds a student of another architecture or avatar count; "
                                 "give a new output directory")
            try:
                student.load_state_dict(state["student"])
            except RuntimeError:  # same config, other parameters: written by an older student network
                raise ValueError(f"{checkpoint} was written by an older student network (its parameters do not "
                                 "match this version's); give a new output directory") from None
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            start = state["step"]
            if ctx.is_main:
                print(f"distill: resuming at step {start} from {checkpoint}", file=sys.stderr, flush=True)
        model = wrap_ddp(student, ctx)
        loss_fn = DistillLoss(options.perceptual_weight, options.vgg_weights).to(ctx.device)
        logger = _logger(out) if ctx.is_main else None
        started = time.perf_counter()
        for step in range(start, options.steps):
            avatar_index, frame_index = sample_batch(targets, step, options.batch, options.seed)
            share = slice(ctx.rank, None, ctx.world_size)
            drivers, index, wanted = batch_tensors(targets, avatar_index[share], frame_index[share], ctx.device)
            terms = loss_fn(model(drivers, index), wanted)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            done = step + 1
            if ctx.is_main and (done % options.log_every == 0 or done == options.steps):
                rate = (done - start) / max(time.perf_counter() - started, 1e-9)
                shown = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in terms.items())
                print(f"distill: step {done}/{options.steps} {shown} ({rate:.2f} steps/s)", file=sys.stderr, flush=True)
                if logger is not None:
                    for name, value in terms.items():
                        logger.add_scalar(f"distill/{name}", float(value.detach()), done)
            if done % options.save_every == 0 or done == options.steps:
                if ctx.is_main:
                    save_checkpoint(checkpoint, student, optimizer, done, options, extra)
                ctx.barrier()  # on save steps only: every rank reaches them, none waits per step
        if logger is not None:
            logger.close()
        return student
    finally:
        distributed.teardown(ctx)


def _logger(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))
