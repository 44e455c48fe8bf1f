"""The training loop: head-pose pretraining, then the main reenactment stage.

Stages, as in the paper:
1. ``pretrain_pose``: the head-pose regressor alone learns to regress the ground-truth pose of
   synthetic heads (their pose is known by construction); with ``[pose_pretrain]
   expression_labels``, the expression encoder learns their expression parameters beside it
   (not the paper's: the demo model's code carried no expression until it was asked to).
2. main: source/driver pairs of one identity; the model predicts the driver frame from the
   source's appearance and the driver's motion. Losses: perceptual + L1, adversarial + feature
   matching once the GAN warm-up is over, and the cycle loss on motion codes using a second
   identity. The pose regressor is frozen (or trained at a low learning rate).

One process per device; under torchrun the reenactment pass and the discriminator are wrapped
in DistributedDataParallel, each process reads its own shard of every epoch, and rank 0 alone
logs and writes checkpoints (with barriers around the write). A checkpoint holds everything an
exact resume needs: weights, optimisers, schedulers, grad scalers, every process's random
generators, the data streams' positions and the step counters.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as model_checkpoint
from ..losses import expression_label_loss
from .config import TrainConfig
from .data_stream import DataStream
from .distributed import DistributedContext
from .logs import NullLogger, RunLogger
from .loop import checkpoint_due, micro_batches, progress_bar, record_step, resume_rng, save_checkpoints, wrap_ddp
from .objectives import (
    LossComputer,
    PoseParameters,
    ReenactmentPass,
    build_discriminator,
    build_pose_dataset,
    build_training_dataset,
    expression_path_parameters,
    pose_regressor_of,
    pose_targets,
)
from .optim import build_adamw, clip_gradients, cosine_schedule
from .state import seed_everything

STATE_FORMAT = "megaportraits-train-state"
STATE_VERSION = 1
POSE_BETAS = (0.9, 0.999)   # plain regression: the GAN-friendly beta1 = 0.5 is not needed


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistributedContext, dataset=None, config_path: str = "",
                 initialise: bool = True):
        """``initialise=False`` skips ``[model] init_from`` (a run about to be resumed: :meth:`load`
        overwrites the weights, and the checkpoint it started from need not exist any more)."""
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.config_path = config_path
        self.out_dir = Path(cfg.log.out_dir)
        seed_everything(cfg.train.seed)          # same initial weights on every process
        from ..config import get_config
        from ..model import build_model

        self.model_config = get_config(cfg.model.preset)
        if cfg.model.matte is not None:
            self.model_config = self.model_config.replace(matte=cfg.model.matte)
        if self.model_config.matte and cfg.data.kind != "synthetic":
            raise ValueError(f"the {cfg.model.preset} preset predicts a matte and trains on the foreground only, "
                             "which needs foreground masks: the synthetic heads have them, video folders do not")
        self.model = build_model(self.model_config).to(self.device)
        self.initialised_from = None
        if cfg.model.init_from and initialise:
            self.initialised_from = model_checkpoint.initialise_from_checkpoint(self.model, cfg.model.init_from)
            if ctx.is_main:
                report = self.initialised_from
                print(f"initialised from {report['checkpoint']}: {report['copied']} weights copied, "
                      f"{len(report['grown'])} grown ({', '.join(report['grown']) or 'none'}), "
                      f"{len(report['kept'])} left at their initialisation")
        self.losses = LossComputer(cfg.losses.weights, self.device, cfg.losses.l1_scales)
        if self.model_config.matte and not self.losses.weights.matte:
            raise ValueError(f"the {cfg.model.preset} model predicts a matte but [losses.weights] matte is 0, so it "
                             "would never learn it: give it a weight (1.0) or set [model] matte = false")
        self.use_gan = self.losses.weights_use_gan()
        self.discriminator = None
        if self.use_gan:
            self.discriminator = build_discriminator(cfg.losses.discriminator_channels,
                                                     cfg.losses.discriminator_scales, self.device)
        self.dataset = dataset if dataset is not None else build_training_dataset(cfg, self.model_config.image_size)
        seed_everything(cfg.train.seed + 1000 * ctx.rank)   # per-process randomness from here on
        self.amp = cfg.train.mixed_precision and self.device.type == "cuda"
        self.step = 0
        self.pose_step = 0
        self.elapsed = 0.0                        # training seconds over all resumed segments
        self.history: dict = {}
        self.main_stream = DataStream(self.dataset, cfg.train.batch_size, ctx.rank, ctx.world_size,
                                      cfg.data.seed, cfg.data.num_workers)
        pose_set = build_pose_dataset(cfg, self.model_config.image_size, self.dataset)
        self.pose_stream = DataStream(pose_set, cfg.pose_pretrain.batch_size, ctx.rank,
                                      ctx.world_size, cfg.data.seed + 1, cfg.data.num_workers)
        self._build_pose_stage()
        self._build_main_stage()
        self.logger = RunLogger(self.out_dir) if ctx.is_main else NullLogger()

    # ---- construction ---------------------------------------------------------------------
    def _wrap(self, module: nn.Module) -> nn.Module:
        return wrap_ddp(module, self.ctx)

    def _build_pose_stage(self) -> None:
        p = self.cfg.pose_pretrain
        regressor = pose_regressor_of(self.model)
        groups = [{"params": list(regressor.parameters()), "lr": p.lr}] if p.train_regressor else []
        if p.expression_labels:
            groups.append({"params": list(self.model.driver_branch.expression_encoder.parameters()), "lr": p.lr})
        self.pose_optimizer = build_adamw(groups, POSE_BETAS, self.cfg.optim.weight_decay)
        self.pose_scheduler = cosine_schedule(self.pose_optimizer, p.steps, p.lr, p.lr * 0.01)
        self.pose_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.pose_net = None   # DDP wrapper, built when the stage runs

    def _build_main_stage(self) -> None:
        cfg = self.cfg
        regressor = pose_regressor_of(self.model)
        pose_ids = {id(p) for p in regressor.parameters()}
        pretrained = cfg.pose_pretrain.steps > 0 or bool(cfg.model.init_from)
        frozen = pretrained and cfg.pose_pretrain.main_stage == "frozen"
        expression_ids = {id(p) for p in expression_path_parameters(self.model)} \
            if cfg.optim.expression_path_lr_scale != 1.0 else set()
        other = [p for p in self.model.parameters() if id(p) not in pose_ids | expression_ids]
        groups = [{"params": other, "lr": cfg.optim.lr}]
        if expression_ids:
            groups.append({"params": [p for p in self.model.parameters() if id(p) in expression_ids],
                           "lr": cfg.optim.lr * cfg.optim.expression_path_lr_scale})
        if not frozen:
            scale = cfg.pose_pretrain.main_lr_scale if pretrained else 1.0
            groups.append({"params": list(regressor.parameters()), "lr": cfg.optim.lr * scale})
        self.pose_frozen_in_main = frozen
        self.optimizer = build_adamw(groups, cfg.optim.betas, cfg.optim.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, cfg.train.steps, cfg.optim.lr, cfg.optim.lr_min)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        if self.discriminator is not None:
            self.d_optimizer = build_adamw(
                [{"params": list(self.discriminator.parameters()), "lr": cfg.optim.discriminator_lr}],
                cfg.optim.betas, cfg.optim.weight_decay)
            # the discriminator's cosine spans the steps it trains: after the GAN warm-up
            self.d_scheduler = cosine_schedule(self.d_optimizer,
                                               max(1, cfg.train.steps - cfg.losses.gan_start_step),
                                               cfg.optim.discriminator_lr, cfg.optim.lr_min)
            self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.reenact = None    # DDP wrappers, built when the stage starts
        self.critic = None

    def _enter_pose_stage(self) -> None:
        if self.pose_net is None:
            regressor = pose_regressor_of(self.model)
            regressor.requires_grad_(self.cfg.pose_pretrain.train_regressor)
            encoder = self.model.driver_branch.expression_encoder if self.cfg.pose_pretrain.expression_labels else None
            self.pose_net = self._wrap(PoseParameters(regressor, encoder))

    def _enter_main_stage(self) -> None:
        if self.reenact is not None:
            return
        pose_regressor_of(self.model).requires_grad_(not self.pose_frozen_in_main)
        self.reenact = self._wrap(ReenactmentPass(self.model, cycle=self.cfg.losses.cycle,
                                                     true_poses=self.cfg.train.true_poses))
        if self.discriminator is not None:
            self.critic = self._wrap(self.discriminator)

    # ---- one step of each stage -------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def _micro_batches(self, stream: DataStream, wrappers: list):
        """Yield the step's micro-batches; DDP all-reduces gradients only after the last one."""
        return micro_batches(self.cfg.train.grad_accum, wrappers, lambda: self._to_device(stream.next()))

    def _to_device(self, batch: dict) -> dict:
        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(self.device, non_blocking=True)
            if isinstance(v, dict):
                return {k: move(x) for k, x in v.items()}
            return v
        return {k: move(v) for k, v in batch.items()}

    def pose_pretrain_step(self) -> dict:
        self._enter_pose_stage()
        self.pose_optimizer.zero_grad(set_to_none=True)
        total, labels_total = 0.0, 0.0
        n = self.cfg.train.grad_accum
        label_weight = self.cfg.pose_pretrain.expression_labels
        for batch in self._micro_batches(self.pose_stream, [self.pose_net]):
            images, target, *expression = pose_targets(batch, expression=bool(label_weight))
            with self._autocast():
                predicted = self.pose_net(images)
                if label_weight:
                    predicted, code = predicted
                    labels = expression_label_loss(code.float(), expression[0])
                loss = self.losses.pose(predicted, target)
            objective = label_weight * labels if label_weight else 0.0
            if self.cfg.pose_pretrain.train_regressor:   # else the regressor has no gradient to take
                objective = objective + loss
            self.pose_scaler.scale(objective / n).backward()
            total += float(loss.detach()) / n
            if label_weight:
                labels_total += float(labels.detach()) / n
        self.pose_scaler.unscale_(self.pose_optimizer)
        clip_gradients(pose_regressor_of(self.model), self.cfg.optim.grad_clip)
        if label_weight:
            clip_gradients(self.model.driver_branch.expression_encoder, self.cfg.optim.grad_clip)
        self.pose_scaler.step(self.pose_optimizer)
        self.pose_scaler.update()
        self.pose_scheduler.step()
        self.pose_step += 1
        scalars = {"pose_l1": total, "lr": self.pose_scheduler.get_last_lr()[0]}
        if label_weight:
            scalars["expression_labels"] = labels_total
        return scalars

    def gan_active(self) -> bool:
        return self.discriminator is not None and self.step >= self.cfg.losses.gan_start_step

    def train_step(self) -> dict:
        """One optimiser step of the main stage; returns this process's scalars."""
        self._enter_main_stage()
        gan = self.gan_active()
        n = self.cfg.train.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        if gan:
            self.d_optimizer.zero_grad(set_to_none=True)
        scalars: dict = {}
        wrappers = [self.reenact] + ([self.critic] if gan else [])
        for batch in self._micro_batches(self.main_stream, wrappers):
            if self.discriminator is not None:
                self.discriminator.requires_grad_(False)
            with self._autocast():
                outputs = self.reenact(batch)
                critic = self.discriminator if gan else None
                loss, terms = self.losses.generator(outputs, batch, critic)
            self.scaler.scale(loss / n).backward()
            if gan:
                self.discriminator.requires_grad_(True)
                with self._autocast():
                    d_loss, d_terms = self.losses.discriminator(self.critic, outputs, batch)
                self.d_scaler.scale(d_loss / n).backward()
                terms.update(d_terms)
            for k, v in terms.items():
                scalars[k] = scalars.get(k, 0.0) + float(v) / n
            self._last_images = [c.detach()[:4] for c in self.losses.image_columns(outputs, batch)]
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.model, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if gan:
            self.d_scaler.unscale_(self.d_optimizer)
            clip_gradients(self.discriminator, self.cfg.optim.grad_clip)
            self.d_scaler.step(self.d_optimizer)
            self.d_scaler.update()
            self.d_scheduler.step()
        self.step += 1
        scalars["lr"] = self.scheduler.get_last_lr()[0]
        return scalars

    # ---- checkpoints --------------------------------------------------------------------------
    def provenance(self) -> dict:
        cfg = self.cfg
        return {
            "data": {"kind": cfg.data.kind, "root": cfg.data.root,
                     "train_identities": cfg.data.train_identities,
                     "heldout_identities": cfg.data.heldout_identities, "augment": cfg.data.augment,
                     "expression_regions": cfg.data.expression_regions},
            "steps": {"pose_pretrain": self.pose_step, "main": self.step,
                      "batch_size": cfg.train.batch_size * cfg.train.grad_accum * self.ctx.world_size,
                      "processes": self.ctx.world_size},
            "training_seconds": round(self.elapsed, 1),
            "losses": {"weights": self.losses.weights_dict(),
                       "gan": self.use_gan, "gan_start_step": cfg.losses.gan_start_step,
                       "cycle": cfg.losses.cycle},
            "config_file": self.config_path,
            "initialised_from": self.initialised_from and {
                k: self.initialised_from[k] for k in ("checkpoint", "sha256", "provenance", "grown")},
            "final_losses": {k: round(v, 6) for k, v in self.history.items()},
        }

    def state_dict(self, rng_states: list) -> dict:
        training = {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "train_config": self.cfg.to_dict(),
            "step": self.step, "pose_step": self.pose_step, "elapsed": self.elapsed,
            "world_size": self.ctx.world_size,
            "rng": rng_states,
            "streams": {"main": self.main_stream.state_dict(), "pose": self.pose_stream.state_dict()},
            "optimizers": {"main": self.optimizer.state_dict(), "pose": self.pose_optimizer.state_dict()},
            "schedulers": {"main": self.scheduler.state_dict(), "pose": self.pose_scheduler.state_dict()},
            "scalers": {"main": self.scaler.state_dict(), "pose": self.pose_scaler.state_dict()},
            "history": dict(self.history),
        }
        if self.discriminator is not None:
            training["discriminator"] = self.discriminator.state_dict()
            training["optimizers"]["discriminator"] = self.d_optimizer.state_dict()
            training["schedulers"]["discriminator"] = self.d_scheduler.state_dict()
            training["scalers"]["discriminator"] = self.d_scaler.state_dict()
        return training

    def save(self, tag: str = "last") -> Path | None:
        """Write ``state_<tag>.pt`` (resume) and ``model_<tag>.pt`` (export) on rank 0.

        Both are checkpoints in the format of :mod:`megaportraits_export.checkpoint` (written
        to a temporary file, then renamed); the state file adds a ``training`` entry.
        """
        return save_checkpoints(self.ctx, self.out_dir, tag, self.model, self.model_config, self.cfg.model.preset,
                                self.provenance, self.state_dict)

    def load(self, path: str | Path) -> None:
        """Restore everything for an exact continuation of the run saved in ``path``."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        training = state.get("training")
        if not training or training.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a training state written by this trainer "
                             "(it has no 'training' section); resume from a state_*.pt file")
        self.model.load_state_dict(state["model"])
        if self.initialised_from is None:   # resumed without re-reading init_from: keep its record
            self.initialised_from = (state.get("provenance") or {}).get("initialised_from")
        self.step, self.pose_step = int(training["step"]), int(training["pose_step"])
        self.elapsed = float(training.get("elapsed", 0.0))
        self.history = dict(training.get("history", {}))
        self.main_stream.load_state_dict(training["streams"]["main"])
        self.pose_stream.load_state_dict(training["streams"]["pose"])
        self.optimizer.load_state_dict(training["optimizers"]["main"])
        self.pose_optimizer.load_state_dict(training["optimizers"]["pose"])
        self.scheduler.load_state_dict(training["schedulers"]["main"])
        self.pose_scheduler.load_state_dict(training["schedulers"]["pose"])
        self.scaler.load_state_dict(training["scalers"]["main"])
        self.pose_scaler.load_state_dict(training["scalers"]["pose"])
        if self.discriminator is not None:
            if "discriminator" not in training:
                raise ValueError(f"{path} was trained without a discriminator but this config "
                                 "enables the GAN; resume with the config the run started with")
            self.discriminator.load_state_dict(training["discriminator"])
            self.d_optimizer.load_state_dict(training["optimizers"]["discriminator"])
            self.d_scheduler.load_state_dict(training["schedulers"]["discriminator"])
            self.d_scaler.load_state_dict(training["scalers"]["discriminator"])
        resume_rng(self.ctx, training["rng"])

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, progress: bool | None = None) -> dict:
        cfg = self.cfg
        progress = cfg.log.progress if progress is None else progress
        total = cfg.pose_pretrain.steps + cfg.train.steps
        with progress_bar(self.ctx, progress, self.logger, total=total, initial=self.pose_step + self.step,
                          desc="train") as bar:
            last_save = time.monotonic()
            while self.pose_step < cfg.pose_pretrain.steps:
                started = time.monotonic()
                scalars = self.pose_pretrain_step()
                self.elapsed += time.monotonic() - started
                self._after_step(scalars, "pose", self.pose_step, bar)
                if self.pose_step % cfg.log.checkpoint_every == 0:
                    self.save()
            while self.step < cfg.train.steps:
                started = time.monotonic()
                scalars = self.train_step()
                self.elapsed += time.monotonic() - started
                self._after_step(scalars, "train", self.step, bar)
                if self.step % cfg.log.image_every == 0 or self.step == 1:
                    self.log_images()
                if checkpoint_due(self.step, cfg.log.checkpoint_every, cfg.log.checkpoint_minutes, last_save,
                                  self.ctx, self.device):
                    self.save()
                    last_save = time.monotonic()
            self.save()
        return dict(self.history)

    def _after_step(self, scalars: dict, stage: str, step: int, bar) -> None:
        record_step(scalars, stage, step, history=self.history, logger=self.logger,
                    log_every=self.cfg.log.log_every, bar=bar, ctx=self.ctx, device=self.device)

    def log_images(self) -> Path | None:
        if not self.ctx.is_main or not hasattr(self, "_last_images"):
            return None
        return self.logger.images("train/reenactment", self._last_images, self.step)
