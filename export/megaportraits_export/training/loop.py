"""The pieces of a training loop that the trainer and the enhancer's trainer share: DDP
wrapping and gradient accumulation, the progress bar, recording a step's scalars, when to
checkpoint, writing the checkpoints, and the per-process random generator states a training
state saves and restores."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import checkpoint as model_checkpoint
from .distributed import DistributedContext, mean_across_processes
from .state import capture_rng, restore_rng


def wrap_ddp(module: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``module`` in DistributedDataParallel on this process's device when running distributed."""
    if not ctx.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def micro_batches(n: int, wrappers: list, next_batch: Callable[[], dict]):
    """Yield a step's ``n`` micro-batches (``next_batch()``); the DDP ones among ``wrappers``
    all-reduce gradients only after the last one."""
    for i in range(n):
        with contextlib.ExitStack() as stack:
            if i < n - 1:
                for w in wrappers:
                    if isinstance(w, DDP):
                        stack.enter_context(w.no_sync())
            yield next_batch()


@contextlib.contextmanager
def progress_bar(ctx: DistributedContext, enabled: bool, logger, *, total: int, initial: int, desc: str):
    """A tqdm bar on the main process when ``enabled`` (else None); on leaving, the bar is
    closed and ``logger`` flushed, however the loop ended."""
    bar = None
    if ctx.is_main and enabled:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc=desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
        logger.flush()


def record_step(scalars: dict, stage: str, step: int, *, history: dict, logger, log_every: int, bar,
                ctx: DistributedContext, device) -> None:
    """Keep a step's scalars in ``history`` as ``<stage>/<name>``; every ``log_every`` steps (and
    on step 1) log their mean across processes and show it on the bar; advance the bar."""
    for k, v in scalars.items():
        history[f"{stage}/{k}"] = v
    if step % log_every == 0 or step == 1:
        averaged = {k: float(mean_across_processes(torch.tensor(float(v), device=device), ctx))
                    for k, v in scalars.items()}
        logger.scalars(averaged, step, prefix=f"{stage}/")
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in averaged.items() if k != "lr"}, refresh=False)
    if bar is not None:
        bar.update(1)


def checkpoint_due(step: int, every: int, minutes: float, last_save: float, ctx: DistributedContext,
                   device) -> bool:
    """Whether to checkpoint after ``step``: every ``every`` steps, or when ``minutes`` (> 0) of
    wall time have passed since ``last_save`` (a ``time.monotonic()``). Under DDP rank 0's clock
    decides, so that every process saves together."""
    timed = minutes > 0 and time.monotonic() - last_save > minutes * 60
    if ctx.enabled and minutes > 0:   # every process must agree to save
        flag = torch.tensor([1.0 if timed else 0.0], device=device)
        dist.broadcast(flag, 0)
        timed = bool(flag.item())
    return step % every == 0 or timed


def gather_rng(ctx: DistributedContext) -> list:
    """Every process's random generator states (:func:`capture_rng`), in rank order."""
    state = capture_rng()
    if not ctx.enabled:
        return [state]
    states = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def resume_rng(ctx: DistributedContext, states: list) -> None:
    """Restore this process's generators from a saved :func:`gather_rng` list; with another
    number of processes they stay as seeded (and the main process says so)."""
    if len(states) == ctx.world_size:
        restore_rng(states[ctx.rank])
    elif ctx.is_main:
        print(f"resuming with {ctx.world_size} process(es) from a run with {len(states)}: "
              "random generators are reseeded, so the continuation is not bit-exact")


def save_checkpoints(ctx: DistributedContext, out_dir: Path, tag: str, model, model_config, preset,
                     provenance: Callable[[], dict], training: Callable[[list], dict]) -> Path | None:
    """Write ``state_<tag>.pt`` (resume: adds ``training(rng_states)`` as its ``training`` entry)
    and ``model_<tag>.pt`` (export) on rank 0, every process's generator states gathered first;
    the path of the state file on rank 0, None elsewhere. Every process must call it."""
    rng_states = gather_rng(ctx)
    ctx.barrier()
    path = None
    if ctx.is_main:
        record = provenance()
        path = model_checkpoint.save_checkpoint(Path(out_dir) / f"state_{tag}.pt", model, model_config, preset,
                                                record, extra={"training": training(rng_states)})
        model_checkpoint.save_checkpoint(Path(out_dir) / f"model_{tag}.pt", model, model_config, preset, record)
    ctx.barrier()
    return path
