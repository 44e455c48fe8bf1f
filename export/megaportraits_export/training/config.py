"""Training configuration: one TOML file describes a whole run.

A run is reproducible from its config file alone (plus the data it names), so every knob that
changes the result lives here and nowhere else: model preset, data, optimiser and schedule,
the head-pose pretraining stage, loss weights and the GAN warm-up, logging and checkpoints.
Defaults are the paper's where the paper states them (AdamW betas (0.5, 0.999), weight decay
1e-2, cosine schedule 2e-4 -> 1e-6).

Unknown keys are an error, so a typo in a config never silently trains with a default.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """The training config file is missing, malformed or names an unknown option."""


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"
    init_from: str = ""                # fine-tune: start from this checkpoint's weights (not a resume)
    matte: bool | None = None          # override the preset's ModelConfig.matte; None: the preset's


@dataclass(frozen=True)
class DataSection:
    kind: str = "synthetic"            # "synthetic" (procedural heads) or "video" (a folder of clips)
    root: str = ""                     # video folder for kind = "video"
    train_identities: int = 1000       # synthetic: identities 0 .. train_identities-1 are for training
    heldout_identities: int = 64       # synthetic: the next ones are held out for evaluation
    augment: bool = True
    num_workers: int = 0
    seed: int = 0
    # synthetic: pairs with the driver's expression region (data.expression_pairs), for the
    # [losses.weights] expression term; this fraction of drivers shows a strong expression
    expression_regions: bool = False
    strong_expression_fraction: float = 0.5
    # of those pairs, this fraction keeps the source's head pose in the driver (only the expression moves)
    same_pose_fraction: float = 0.0


@dataclass(frozen=True)
class OptimSection:
    lr: float = 2e-4
    lr_min: float = 1e-6
    betas: tuple = (0.5, 0.999)
    weight_decay: float = 1e-2
    discriminator_lr: float = 2e-4
    grad_clip: float = 0.0             # 0: no clipping
    warmup_steps: int = 0              # the enhancer's linear warm-up into the cosine (training.optim.cosine_schedule)
    # the expression path (expression encoder, both warping generators) learns this many times
    # faster than the rest: it can move while the renderer, matte and backdrop stay where they are
    expression_path_lr_scale: float = 1.0


@dataclass(frozen=True)
class PosePretrainSection:
    steps: int = 0                     # 0: skip the stage
    lr: float = 1e-3
    batch_size: int = 16
    main_stage: str = "frozen"         # "frozen" or "low_lr" during the main stage
    main_lr_scale: float = 0.1         # for "low_lr": fraction of the main learning rate
    # > 0: the expression encoder learns the synthetic heads' expression parameters in this stage
    # too, beside the pose (losses.expression_label_loss, this its weight; synthetic data only)
    expression_labels: float = 0.0
    # false: only the expression encoder learns in this stage (expression_labels > 0), the
    # regressor keeps its weights: a fine-tuning's renderer is co-adapted to its regressor's poses
    # (docs/demo_model.md, session 8: a regressor retrained here cost ws9 4.4 dB whole-image)
    train_regressor: bool = True


@dataclass(frozen=True)
class LossSection:
    weights: dict = field(default_factory=dict)   # fields of losses.LossWeights; empty: paper defaults
    gan_start_step: int = 0            # adversarial + feature matching from this main-stage step on
    cycle: bool = True                 # the cross-identity pass and its cycle loss
    l1_scales: int = 1                 # pixel L1 averaged over this many pyramid levels (1: plain L1)
    discriminator_channels: int = 64   # width of the first patch-discriminator layer
    discriminator_scales: int = 2


@dataclass(frozen=True)
class TrainSection:
    steps: int = 100                   # main-stage optimiser steps
    batch_size: int = 4                # per process, per micro-batch
    grad_accum: int = 1                # micro-batches per optimiser step
    seed: int = 0
    device: str = "auto"               # "auto", "cpu", "cuda"
    mixed_precision: bool = True       # autocast + GradScaler, used only on CUDA
    threads: int = 0                   # CPU threads per process (torch.set_num_threads); 0: torch's default
    # An oracle, synthetic heads only: the model is driven by the heads' true poses, not its
    # regressor's, to measure what the rest of it does with an exact motion (issue 13: the
    # expression gain is bounded by the poses' precision, tools/probe_pose_precision.py). Its
    # checkpoints need the true poses to be scored (expression-eval --true-poses); never shipped.
    true_poses: bool = False


@dataclass(frozen=True)
class EnhancerSection:
    """Train the high-resolution enhancer G_enh (networks.enhancer) on top of a frozen base model
    instead of the base model itself; weights are the paper's (L1 100, FM 100, cycle 10)."""
    preset: str = ""                   # an enhancer preset; empty: this run trains the base model
    base_checkpoint: str = ""          # the frozen base model (model_*.pt) for the cross-driving branch
    cross_driving: bool = True         # adversarial on enhanced cross-driven frames + the cycle loss
    l1: float = 100.0                  # on the super-resolution pairs: the weight of sr_loss
    sr_loss: str = "l1"                # the paper's "l1", or "mse" (squared error, what PSNR measures)
    linear_fit_items: int = 0          # fit the linear path by least squares on this many SR pairs first; 0: off
    train_linear_path: bool = True     # false: the linear path keeps its initial (fitted) taps
    init_from: str = ""                # start from this enhancer checkpoint's weights (parts it lacks: as built)
    adversarial: float = 1.0
    feature_matching: float = 100.0
    cycle: float = 10.0                # L1(down4(x_c), down8(x_c_HR))
    reenacted: float = 0.0             # x_c_HR against its truth at 2x: synthetic data only (the paper has none)
    reenacted_loss: str = "mse"        # "mse", "l1" or "shown_mse" (see training.enhancement.reenacted_loss)
    ssim: float = 0.0                  # 1 - SSIM of the super-resolution output's colours (losses.ssim_loss)
    reenacted_ssim: float = 0.0        # 1 - SSIM of the enhanced base rendering as shown, against its truth


@dataclass(frozen=True)
class LogSection:
    out_dir: str = "runs/default"
    log_every: int = 10
    image_every: int = 100
    checkpoint_every: int = 500        # steps
    checkpoint_minutes: float = 0.0    # also checkpoint after this much wall time; 0: off
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    pose_pretrain: PosePretrainSection = PosePretrainSection()
    losses: LossSection = LossSection()
    train: TrainSection = TrainSection()
    log: LogSection = LogSection()
    enhancer: EnhancerSection = EnhancerSection()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, section: str, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


_CHOICES = {
    ("data", "kind"): ("synthetic", "video", "portraits"),  # portraits: high-res photos, for an enhancer
    ("enhancer", "reenacted_loss"): ("mse", "l1", "shown_mse"),
    ("enhancer", "sr_loss"): ("l1", "mse"),
    ("pose_pretrain", "main_stage"): ("frozen", "low_lr"),
    ("train", "device"): ("auto", "cpu", "cuda"),
}


def _section(cls, name: str, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    typed = {}
    for key, value in values.items():
        default = known[key].default if known[key].default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"[{name}] {key} = {value!r} should be of type {type(default).__name__}")
        choices = _CHOICES.get((name, key))
        if choices and value not in choices:
            raise ConfigError(f"[{name}] {key} = {value!r} is not one of {', '.join(choices)}")
        typed[key] = value
    return cls(**typed)


def config_from_dict(raw: dict) -> TrainConfig:
    sections = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join('[' + u + ']' for u in unknown)}; "
                          f"known: {', '.join(sections)}")
    classes = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{name: _section(classes[name], name, raw.get(name, {})) for name in sections})
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    positive = [("train", "steps"), ("train", "batch_size"), ("train", "grad_accum"),
                ("log", "log_every"), ("log", "image_every"), ("log", "checkpoint_every")]
    assembling = bool(cfg.enhancer.preset and cfg.enhancer.init_from)  # an enhancer may be loaded + fitted only
    for section, key in positive:
        if (section, key) == ("train", "steps") and assembling and cfg.train.steps == 0:
            continue
        if getattr(getattr(cfg, section), key) < 1:
            raise ConfigError(f"[{section}] {key} must be at least 1"
                              + (" (0 only for an [enhancer] run with init_from)" if key == "steps" else ""))
    if cfg.optim.lr_min > cfg.optim.lr:
        raise ConfigError("[optim] lr_min must not exceed lr")
    if cfg.optim.expression_path_lr_scale <= 0:
        raise ConfigError("[optim] expression_path_lr_scale must be positive (1: the same rate as the rest)")
    if cfg.model.matte is not None and not isinstance(cfg.model.matte, bool):
        raise ConfigError(f"[model] matte = {cfg.model.matte!r} should be true or false")
    if cfg.data.expression_regions and (cfg.data.kind != "synthetic" or cfg.data.augment or cfg.losses.cycle):
        raise ConfigError("[data] expression_regions needs kind = \"synthetic\", augment = false and "
                          "[losses] cycle = false (its pairs have no second identity and no augmentation)")
    if not 0.0 <= cfg.data.strong_expression_fraction <= 1.0:
        raise ConfigError("[data] strong_expression_fraction must be between 0 and 1")
    if not 0.0 <= cfg.data.same_pose_fraction <= 1.0:
        raise ConfigError("[data] same_pose_fraction must be between 0 and 1")
    if cfg.pose_pretrain.expression_labels < 0:
        raise ConfigError("[pose_pretrain] expression_labels is a loss weight: 0 or more")
    if not cfg.pose_pretrain.train_regressor and not cfg.pose_pretrain.expression_labels:
        raise ConfigError("[pose_pretrain] train_regressor = false leaves the stage nothing to train: "
                          "set expression_labels > 0, or steps = 0")
    if cfg.pose_pretrain.expression_labels and cfg.data.kind != "synthetic":
        raise ConfigError("[pose_pretrain] expression_labels needs the synthetic heads' expression parameters: "
                          "[data] kind = \"synthetic\"")
    if cfg.train.true_poses and (cfg.data.kind != "synthetic" or cfg.losses.cycle):
        raise ConfigError("[train] true_poses drives the model by the synthetic heads' true poses: it needs "
                          "[data] kind = \"synthetic\" and [losses] cycle = false")
    if cfg.data.kind == "video" and not cfg.data.root:
        raise ConfigError("[data] kind = \"video\" needs root = the folder of training clips")
    _validate_enhancer(cfg)


def _validate_enhancer(cfg: TrainConfig) -> None:
    e = cfg.enhancer
    if not e.preset:
        if cfg.data.kind == "portraits":
            raise ConfigError("[data] kind = \"portraits\" trains an enhancer: give [enhancer] preset")
        return
    if cfg.data.kind == "video":
        raise ConfigError("an enhancer trains on [data] kind = \"synthetic\" or \"portraits\", not video clips")
    if cfg.data.kind == "portraits" and not cfg.data.root:
        raise ConfigError("[data] kind = \"portraits\" needs root = the folder of high-resolution portraits")
    if e.cross_driving and not e.base_checkpoint:
        raise ConfigError("[enhancer] cross_driving needs base_checkpoint = the frozen base model (model_*.pt); "
                          "or set cross_driving = false for super-resolution pairs only")
    if e.reenacted > 0 and not (e.cross_driving and cfg.data.kind == "synthetic"):
        raise ConfigError("[enhancer] reenacted needs cross_driving = true and [data] kind = \"synthetic\" (only "
                          "the renderer knows the truth of the base model's renderings)")
    if e.reenacted_ssim > 0 and not (e.cross_driving and cfg.data.kind == "synthetic"):
        raise ConfigError("[enhancer] reenacted_ssim needs cross_driving = true and [data] kind = \"synthetic\" (only "
                          "the renderer knows the truth of the base model's renderings)")
    if min(e.l1, e.adversarial, e.feature_matching, e.cycle, e.reenacted, e.ssim, e.reenacted_ssim) < 0:
        raise ConfigError("[enhancer] loss weights must not be negative")


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML training config; raises ConfigError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e})") from None
    return config_from_dict(raw)
