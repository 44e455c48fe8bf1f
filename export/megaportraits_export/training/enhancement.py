"""Training the high-resolution enhancer G_enh on top of a frozen base model (``[enhancer]``).

The paper's recipe ("High resolution"): the base model is frozen; G_enh learns from
super-resolution pairs (a high-resolution portrait and its half-size downsample) with L1
(lambda 100) and adversarial + feature-matching terms (lambda_FM 100), and from an unsupervised
cross-driving branch: the base model renders x_c from a source and another identity's driver,
G_enh lifts it to x_c^HR, the discriminator judges x_c^HR, and a cycle loss keeps its content,
L1(down4(x_c), down8(x_c^HR)) (lambda 10).

One addition the paper could not make: the synthetic renderer knows the truth of the base model's
renderings at 2x (the driver performs the motion of the pair's high-resolution image), so
``[enhancer] reenacted`` > 0 adds the error of x_c^HR against that truth: the enhancer learns to
lift the base model's own blurry output, not only clean downsampled images (a different input
distribution). Its default form is the squared error: the base frame does not determine the truth
(its errors are large where the face is blurred), and the squared error's optimum is the
truth's mean given the frame, what PSNR rewards; L1's is its median (on the demo model after
200 steps, L1 beat bicubic's L1 but lost 0.15 dB of PSNR to it).

``[enhancer] sr_loss = "mse"`` puts the squared error on the super-resolution pairs too: on clean
pairs bicubic's colour error is zero at most pixels, so L1's sign gradient holds the residual at
its median, zero (200 probe steps: colour weights 1e-5, +0.0003 dB); the squared error weights the
edges. ``linear_fit_items`` > 0 first sets the enhancer's linear path (``linear_taps``) to the
least-squares filter of that many pairs (:func:`least_squares_linear_path`): the best linear
upsampler of box-downsampled portraits, from which SGD refines and the nonlinear residual learns
what no linear filter can (on the base model's blurry frames the filter's sharpening is wrong,
and the residual has to learn to undo it).

The run uses the training package's parts as the base trainer does (:class:`DataStream` shards
and positions, DDP through the same :class:`DistributedContext`, AdamW and the cosine schedule,
the multi-scale patch discriminator and hinge / feature-matching losses, random-generator
capture, :class:`RunLogger`, the checkpoint format) and writes the same files: ``state_last.pt``
(exact resume) and ``model_last.pt`` (the enhancer's weights, config and provenance, what
:func:`megaportraits_export.onnx_export.enhancer.add_enhancer` exports).

Both branches go through G_enh in one forward (the pairs' low halves and the cross-driven frames
concatenated along the batch: GroupNorm is per sample, so this is exact), so DDP sees one
forward per backward. The discriminator judges the RGB channels; a matte model's enhancer is
held to its matte by the L1 term.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint as model_checkpoint
from ..losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss, ssim_loss
from ..networks.enhancer import Enhancer, build_enhancer, get_enhancer_config, linear_padding
from .config import TrainConfig
from .data_stream import DataStream
from .distributed import DistributedContext
from .logs import NullLogger, RunLogger
from .loop import checkpoint_due, micro_batches, progress_bar, record_step, resume_rng, save_checkpoints, wrap_ddp
from .objectives import build_discriminator
from .optim import build_adamw, clip_gradients, cosine_schedule
from .state import seed_everything

STATE_FORMAT = "megaportraits-enhancer-train-state"
STATE_VERSION = 1


def build_enhancement_dataset(cfg: TrainConfig, base_size: int, with_mask: bool):
    from ..data.enhancement import PortraitFolderPairs, SyntheticEnhancementPairs

    if cfg.data.kind == "portraits":
        if with_mask:
            raise ValueError("a matte enhancer needs foreground masks: train it on [data] kind = \"synthetic\"")
        return PortraitFolderPairs(cfg.data.root, base_size, seed=cfg.data.seed)
    return SyntheticEnhancementPairs(cfg.data.train_identities, base_size, seed=cfg.data.seed, with_mask=with_mask)


def colour_pairs(dataset, items: int, batch: int = 8):
    """The colours of the first ``items`` super-resolution pairs of ``dataset``, as batches of
    (low, high): what :func:`least_squares_linear_path` fits."""
    count = min(items, len(dataset))
    for start in range(0, count, batch):
        chunk = [dataset[i] for i in range(start, min(start + batch, count))]
        yield torch.stack([c["low"][:3] for c in chunk]), torch.stack([c["high"][:3] for c in chunk])


@torch.no_grad()
def least_squares_linear_path(enhancer: Enhancer, pairs, ridge: float = 1e-6) -> int:
    """Set ``enhancer``'s linear path to the least-squares filter of ``pairs`` (an iterable of
    batches of (low, high) colours (N, 3, S, S) and (N, 3, 2S, 2S)): per output phase, the taps
    and bias minimising the squared error over every pixel and colour channel, solved in float64
    from the normal equations (``ridge`` keeps them regular on flat images). Returns the number
    of equations (pixels) fitted."""
    taps = enhancer.config.linear_taps
    if not taps:
        raise ValueError(f"enhancer {enhancer.config.name} has no linear path (linear_taps 0)")
    phases = enhancer.linear_path.out_channels
    unknowns = taps * taps + 1
    normal = torch.zeros(phases, unknowns, unknowns, dtype=torch.float64)
    moment = torch.zeros(phases, unknowns, dtype=torch.float64)
    count = 0
    for low, high in pairs:
        n, c, h, w = low.shape
        windows = F.unfold(F.pad(low.reshape(n * c, 1, h, w).double(), linear_padding(taps), mode="replicate"), taps)
        design = torch.cat([windows, torch.ones_like(windows[:, :1])], 1).transpose(1, 2).reshape(-1, unknowns)
        scale = high.shape[-1] // w
        truth = F.pixel_unshuffle(high.reshape(n * c, 1, h * scale, w * scale).double(), scale)  # (nc, phases, h, w)
        truth = truth.flatten(2).transpose(1, 2).reshape(-1, phases)
        normal += design.T @ design
        moment += (design.T @ truth).T
        count += design.shape[0]
    if not count:
        raise ValueError("no pairs to fit the linear path on")
    solution = torch.linalg.solve(normal + ridge * count * torch.eye(unknowns, dtype=torch.float64),
                                  moment[..., None])[..., 0]
    enhancer.linear_path.weight.copy_(solution[:, :-1].reshape(phases, 1, taps, taps).float())
    enhancer.linear_path.bias.copy_(solution[:, -1].float())
    return count


def cycle_loss(x_c: torch.Tensor, x_c_hr: torch.Tensor) -> torch.Tensor:
    """L1(down4(x_c), down8(x_c^HR)): the enhanced frame keeps the base frame's content."""
    return F.l1_loss(F.avg_pool2d(x_c_hr, 8), F.avg_pool2d(x_c, 4))


def reenacted_loss(x_c_hr: torch.Tensor, truth: torch.Tensor, kind: str = "mse",
                   backdrop: torch.Tensor | None = None) -> torch.Tensor:
    """The error (``kind`` "mse", "l1" or "shown_mse") of the enhanced base rendering against the
    truth at 2x. With a matte (4 channels), "mse" and "l1" count the colours only on the person
    (true mask): a matte model's colours off the matte are never shown (the SDK composites them
    over the source's backdrop; there they are far from the truth's backdrop, 0.28 mean error on
    the demo model), and hold the matte to the true mask. "shown_mse" is the squared error of
    the frame as shown over ``backdrop`` (:func:`shown`), what the evaluation's PSNR measures: the matte then
    counts only where the person and the backdrop differ (held to the hard true mask, the soft
    upsampled matte of a blurry base frame moved the composite away from the truth: on the demo
    model after 100 steps, 25.48 dB vs bicubic's 25.61, all of it from the matte channel)."""
    if kind == "shown_mse":
        return F.mse_loss(shown(x_c_hr, backdrop), truth[:, :3])
    error = F.mse_loss if kind == "mse" else F.l1_loss
    if truth.shape[1] == 4:
        mask = truth[:, 3:]
        return error(x_c_hr[:, :3] * mask, truth[:, :3] * mask) + error(x_c_hr[:, 3:], mask)
    return error(x_c_hr, truth)


def shown(x_c_hr: torch.Tensor, backdrop: torch.Tensor | None) -> torch.Tensor:
    """The enhanced base rendering as a viewer sees it: a matte model's colours composited with
    its enhanced matte over ``backdrop`` (3 channels: the person's backdrop alone, the data's
    ``backdrop``; the evaluation composites over the backdrop cut from the source, the SDK over
    the source photo's), so colour and matte errors count where, and as much as, they show.
    An RGB frame as it is."""
    if x_c_hr.shape[1] != 4:
        return x_c_hr
    if backdrop is None:
        raise ValueError("a matte frame is shown over its backdrop, and these pairs have none (the synthetic "
                         "pairs' backdrop)")
    matte = x_c_hr[:, 3:]
    return x_c_hr[:, :3] * matte + backdrop * (1.0 - matte)


class FrozenBase(nn.Module):
    """The base model, frozen: (source, driver) -> its cross-driven rendering (RGB or RGBA)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBase":  # stays in eval mode
        return self

    @torch.no_grad()
    def forward(self, source: torch.Tensor, driver: torch.Tensor) -> torch.Tensor:
        return self.model.reenact(self.model.source_branch(source), self.model.driver_branch(driver))


class EnhancerTrainer:
    def __init__(self, cfg: TrainConfig, ctx: DistributedContext, config_path: str = "", dataset=None,
                 initialise: bool = True):
        """``initialise=False`` skips ``[enhancer] init_from`` and the linear path's fit (a run
        about to be resumed: :meth:`load` replaces the weights, and keeps the state's record of
        where they started)."""
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.config_path = config_path
        self.out_dir = Path(cfg.log.out_dir)
        e = cfg.enhancer
        seed_everything(cfg.train.seed)
        self.enhancer_config = get_enhancer_config(e.preset)
        self.base, self.base_provenance = None, None
        if e.cross_driving:
            base, base_config, self.base_provenance = model_checkpoint.load_model_from_checkpoint(e.base_checkpoint)
            if base_config.image_size != self.enhancer_config.base_size:
                raise ValueError(f"the base model renders {base_config.image_size}x{base_config.image_size} but the "
                                 f"{e.preset} enhancer reads {self.enhancer_config.base_size}; pick the enhancer "
                                 "preset of the base model's size")
            if bool(base_config.matte) != self.enhancer_config.matte:
                raise ValueError(f"the base model {'has' if base_config.matte else 'has no'} matte but the {e.preset} "
                                 f"enhancer has {self.enhancer_config.channels} channels; use a "
                                 f"{'4' if base_config.matte else '3'}-channel enhancer preset")
            self.base = FrozenBase(base).to(self.device)
        self.model = build_enhancer(self.enhancer_config).to(self.device)
        self.initialised_from = self._initialise_from(e.init_from) if e.init_from and initialise else None
        self.dataset = dataset if dataset is not None else build_enhancement_dataset(
            cfg, self.enhancer_config.base_size, self.enhancer_config.matte)
        if e.linear_fit_items > 0 and initialise:
            self._fit_linear_path(e.linear_fit_items)
        self.use_gan = e.adversarial > 0 or e.feature_matching > 0
        self.discriminator = (build_discriminator(cfg.losses.discriminator_channels, cfg.losses.discriminator_scales,
                                                  self.device) if self.use_gan else None)
        seed_everything(cfg.train.seed + 1000 * ctx.rank)
        self.step = 0
        self.elapsed = 0.0
        self.history: dict = {}
        self.stream = DataStream(self.dataset, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.data.seed,
                                 cfg.data.num_workers)
        if self.enhancer_config.linear_taps and not e.train_linear_path:
            # the reenacted terms pull it towards a filter for blurry frames, which costs the
            # clean pairs 1-2 dB (a least-squares fit on both: 35.57 dB vs bicubic 36.50)
            self.model.linear_path.requires_grad_(False)
        o = cfg.optim
        self.optimizer = build_adamw([{"params": [p for p in self.model.parameters() if p.requires_grad],
                                       "lr": o.lr}], o.betas, o.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, cfg.train.steps, o.lr, o.lr_min, o.warmup_steps)
        if self.discriminator is not None:
            self.d_optimizer = build_adamw([{"params": list(self.discriminator.parameters()),
                                             "lr": o.discriminator_lr}], o.betas, o.weight_decay)
            self.d_scheduler = cosine_schedule(self.d_optimizer, max(1, cfg.train.steps - cfg.losses.gan_start_step),
                                               o.discriminator_lr, o.lr_min)
        self.net = self._wrap(self.model)
        self.critic = self._wrap(self.discriminator) if self.discriminator is not None else None
        self.logger = RunLogger(self.out_dir) if ctx.is_main else NullLogger()

    def _initialise_from(self, path: str) -> dict:
        """Load an enhancer checkpoint's weights into the model. The model may have parts the
        checkpoint lacks (a linear path added to a network trained without one); those stay as
        built, everything else must match by name and shape."""
        start, start_config, start_provenance = load_enhancer_checkpoint(path)
        try:
            missing, unexpected = self.model.load_state_dict(start.state_dict(), strict=False)
        except RuntimeError:
            missing, unexpected = None, None
        if missing is None or unexpected or any(not k.startswith("linear_path.") for k in missing):
            raise ValueError(f"[enhancer] init_from {path!r} holds an enhancer ({start_config.name}, skips "
                             f"{start_config.skips}) whose weights do not fit preset {self.enhancer_config.name!r}; "
                             "start from a checkpoint of the same layout")
        return {"checkpoint": start_provenance["checkpoint"], "config": start_config.to_dict(),
                "added": sorted(missing)}

    def _fit_linear_path(self, items: int) -> None:
        """The least-squares linear path on the first ``items`` pairs of the dataset (the same on
        every rank: the items are deterministic)."""
        least_squares_linear_path(self.model, colour_pairs(self.dataset, items))

    def _wrap(self, module: nn.Module) -> nn.Module:
        return wrap_ddp(module, self.ctx)

    def gan_active(self) -> bool:
        return self.discriminator is not None and self.step >= self.cfg.losses.gan_start_step

    def _batches(self, wrappers: list):
        return micro_batches(self.cfg.train.grad_accum, wrappers,
                             lambda: {k: v.to(self.device, non_blocking=True) for k, v in self.stream.next().items()})

    def losses(self, batch: dict, gan: bool) -> tuple:
        """(generator loss, discriminator inputs, scalars) of one micro-batch."""
        e = self.cfg.enhancer
        low, high = batch["low"], batch["high"]
        inputs = [low]
        x_c = None
        if self.base is not None:
            x_c = self.base(batch["cross_source"], batch["cross_driver"])
            inputs.append(x_c)
        out = self.net(torch.cat(inputs) if len(inputs) > 1 else low)
        enhanced, x_c_hr = out[:len(low)], (out[len(low):] if x_c is not None else None)
        sr = "l1" if e.sr_loss == "l1" else "sr_mse"
        terms = {sr: (F.l1_loss if sr == "l1" else F.mse_loss)(enhanced, high)}
        loss = e.l1 * terms[sr]
        if e.ssim > 0:  # the evaluation scores the colours
            terms["ssim"] = ssim_loss(enhanced[:, :3], high[:, :3])
            loss = loss + e.ssim * terms["ssim"]
        if x_c is not None:
            terms["cycle"] = cycle_loss(x_c, x_c_hr)
            loss = loss + e.cycle * terms["cycle"]
            if e.reenacted > 0:
                terms["reenacted"] = reenacted_loss(x_c_hr, batch["cross_target"], e.reenacted_loss,
                                                    batch.get("backdrop"))
                loss = loss + e.reenacted * terms["reenacted"]
            if e.reenacted_ssim > 0:
                truth = batch["cross_target"]
                terms["reenacted_ssim"] = ssim_loss(shown(x_c_hr, batch.get("backdrop")), truth[:, :3])
                loss = loss + e.reenacted_ssim * terms["reenacted_ssim"]
        fakes = [enhanced[:, :3]] + ([x_c_hr[:, :3]] if x_c_hr is not None else [])
        if gan:
            self.discriminator.requires_grad_(False)
            real = self.discriminator(high[:, :3])   # unwrapped: DDP reduces the critic in its own pass
            judged = [self.discriminator(f) for f in fakes]
            terms["adversarial"] = torch.stack([generator_hinge_loss(j) for j in judged]).mean()
            terms["feature_matching"] = feature_matching_loss(judged[0], real)  # paired: the SR branch only
            loss = loss + e.adversarial * terms["adversarial"] + e.feature_matching * terms["feature_matching"]
            self.discriminator.requires_grad_(True)
        terms["loss"] = loss
        return loss, (high[:, :3], [f.detach() for f in fakes]), terms

    def train_step(self) -> dict:
        gan = self.gan_active()
        n = self.cfg.train.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if gan:
            self.d_optimizer.zero_grad(set_to_none=True)
        scalars: dict = {}
        for batch in self._batches([self.net] + ([self.critic] if gan else [])):
            loss, (real, fakes), terms = self.losses(batch, gan)
            (loss / n).backward()
            if gan:  # one critic forward (real and every fake along the batch) for DDP's one reduction
                judged = _split(self.critic(torch.cat([real] + fakes)), len(real))
                d_loss = torch.stack([discriminator_hinge_loss(judged[0], j) for j in judged[1:]]).mean()
                (d_loss / n).backward()
                terms["discriminator"] = d_loss
            for k, v in terms.items():
                scalars[k] = scalars.get(k, 0.0) + float(v.detach()) / n
            self._last_images = [F.interpolate(batch["low"][:4, :3], scale_factor=2, mode="bicubic").clamp(0, 1),
                                 fakes[0][:4], real[:4]]
        clip_gradients(self.model, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if gan:
            clip_gradients(self.discriminator, self.cfg.optim.grad_clip)
            self.d_optimizer.step()
            self.d_scheduler.step()
        self.step += 1
        scalars["lr"] = self.scheduler.get_last_lr()[0]
        return scalars

    # ---- checkpoints --------------------------------------------------------------------------
    def provenance(self) -> dict:
        cfg, e = self.cfg, self.cfg.enhancer
        base = self.base_provenance or {}
        return {
            "kind": "enhancer",
            "data": {"kind": cfg.data.kind, "root": cfg.data.root, "train_identities": cfg.data.train_identities},
            "base_model": {"preset": base.get("preset"), "checkpoint": base.get("checkpoint")} if base else None,
            "steps": {"main": self.step,
                      "batch_size": cfg.train.batch_size * cfg.train.grad_accum * self.ctx.world_size,
                      "processes": self.ctx.world_size},
            "training_seconds": round(self.elapsed, 1),
            "losses": {"l1": e.l1, "sr_loss": e.sr_loss, "linear_fit_items": e.linear_fit_items,
                       "train_linear_path": e.train_linear_path,
                       "warmup_steps": cfg.optim.warmup_steps, "adversarial": e.adversarial, "feature_matching": e.feature_matching,
                       "cycle": e.cycle, "reenacted": e.reenacted, "reenacted_loss": e.reenacted_loss,
                       "ssim": e.ssim, "reenacted_ssim": e.reenacted_ssim, "cross_driving": e.cross_driving,
                       "gan_start_step": cfg.losses.gan_start_step},
            "config_file": self.config_path,
            "initialised_from": self.initialised_from,
            "final_losses": {k: round(v, 6) for k, v in self.history.items()},
        }

    def training_state(self, rng_states: list) -> dict:
        """The ``training`` entry of a state file: everything an exact resume needs."""
        training = {"format": STATE_FORMAT, "version": STATE_VERSION, "train_config": self.cfg.to_dict(),
                    "step": self.step, "elapsed": self.elapsed, "world_size": self.ctx.world_size,
                    "rng": rng_states, "stream": self.stream.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "history": dict(self.history)}
        if self.discriminator is not None:
            training.update(discriminator=self.discriminator.state_dict(),
                            d_optimizer=self.d_optimizer.state_dict(), d_scheduler=self.d_scheduler.state_dict())
        return training

    def save(self, tag: str = "last") -> Path | None:
        return save_checkpoints(self.ctx, self.out_dir, tag, self.model, self.enhancer_config,
                                self.cfg.enhancer.preset, self.provenance, self.training_state)

    def load(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        training = state.get("training")
        if not training or training.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not an enhancer training state; resume from the state_*.pt of an "
                             "[enhancer] run")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:  # e.g. a demo128 run from before the preset's narrower stages
            raise ValueError(f"{path} holds an enhancer of another shape than [enhancer] preset "
                             f"{self.cfg.enhancer.preset!r} builds now; start a new run in a new out_dir") from None
        if self.initialised_from is None:  # resumed without re-reading init_from: keep its record
            self.initialised_from = (state.get("provenance") or {}).get("initialised_from")
        self.step, self.elapsed = int(training["step"]), float(training["elapsed"])
        self.history = dict(training["history"])
        self.stream.load_state_dict(training["stream"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        if self.discriminator is not None:
            if "discriminator" not in training:
                raise ValueError(f"{path} was trained without a discriminator; resume with the run's own config")
            self.discriminator.load_state_dict(training["discriminator"])
            self.d_optimizer.load_state_dict(training["d_optimizer"])
            self.d_scheduler.load_state_dict(training["d_scheduler"])
        resume_rng(self.ctx, training["rng"])

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, progress: bool | None = None) -> dict:
        cfg = self.cfg
        progress = cfg.log.progress if progress is None else progress
        with progress_bar(self.ctx, progress, self.logger, total=cfg.train.steps, initial=self.step,
                          desc="train enhancer") as bar:
            last_save = time.monotonic()
            while self.step < cfg.train.steps:
                started = time.monotonic()
                scalars = self.train_step()
                self.elapsed += time.monotonic() - started
                record_step(scalars, "enhancer", self.step, history=self.history, logger=self.logger,
                            log_every=cfg.log.log_every, bar=bar, ctx=self.ctx, device=self.device)
                if self.ctx.is_main and (self.step % cfg.log.image_every == 0 or self.step == 1):
                    self.logger.images("train/enhancement (bicubic, enhanced, target)", self._last_images, self.step)
                if checkpoint_due(self.step, cfg.log.checkpoint_every, cfg.log.checkpoint_minutes, last_save,
                                  self.ctx, self.device):
                    self.save()
                    last_save = time.monotonic()
            self.save()
        return dict(self.history)


def _split(outputs: list, size: int) -> list:
    """A discriminator's outputs on a concatenated batch -> one output per ``size``-long chunk."""
    chunks = outputs[0][0].shape[0] // size
    return [[[t[i * size:(i + 1) * size] for t in scale] for scale in outputs] for i in range(chunks)]


def load_enhancer_checkpoint(path: str | Path):
    """(G_enh in eval mode, its EnhancerConfig, provenance + checkpoint file and sha256) from a
    ``model_*.pt`` / ``state_*.pt`` of an enhancer run."""
    from megaportraits.manifest import sha256_file

    from ..networks.enhancer import EnhancerConfig

    path = Path(path)
    if not path.is_file():
        raise model_checkpoint.CheckpointError(f"enhancer checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    config_dict = dict(state.get("config") or {})
    preset = config_dict.pop("preset", None)
    if state.get("format") != model_checkpoint.FORMAT or "base_size" not in config_dict:
        raise model_checkpoint.CheckpointError(f"{path.name} is not an enhancer checkpoint (model_*.pt of an "
                                               "[enhancer] training run)")
    model = build_enhancer(EnhancerConfig.from_dict(config_dict))
    model.load_state_dict(state["model"], strict=True)
    provenance = {**(state.get("provenance") or {}), "preset": preset,
                  "checkpoint": {"file": path.name, "sha256": sha256_file(path)}}
    return model.eval(), model.config, provenance
