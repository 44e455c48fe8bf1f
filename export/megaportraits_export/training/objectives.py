"""What one training step computes: the reenactment pass, the pose targets, the loss terms.

The trainer owns the loop (optimisers, DDP, checkpoints); this module owns the maths of a step,
so the two can be read separately:

- :class:`ReenactmentPass`: the whole generator-side forward of a step as one module, so that
  DDP wraps exactly one forward per backward. Self-reenactment (source -> driver of the same
  identity) and, for the cycle loss, the second identity's source driven by the same driver
  plus the motion codes the cycle loss compares.
- :class:`PoseParameters`: the head-pose regressor's raw parameters, regressed against the
  synthetic ground truth in the ``pretrain_pose`` stage, with the expression encoder's code
  beside them when that stage also teaches it the expression parameters.
- :class:`LossComputer`: the weighted sum of the paper's losses (``losses`` package) and the
  discriminator's hinge loss.

A model with a matte (``ModelConfig.matte``) is trained as the paper trains: every image loss
sees the foreground only (prediction and target multiplied by the driver's foreground mask),
and the matte itself learns the mask; the background is composited at inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..warp import pose_from_parameters, pose_matrix


def pose_regressor_of(model: nn.Module) -> nn.Module:
    """The head-pose regressor inside the driver branch (pretrained first, then frozen)."""
    return model.driver_branch.head_pose


def expression_path_parameters(model: nn.Module) -> list:
    """What carries the driver's expression to the image: the expression encoder, the two
    warping generators and, in a model with it, the source-pixel path (its flow and G2D's convs
    that read and blend it) and the expression edit (``[optim] expression_path_lr_scale`` gives
    them their own rate)."""
    modules = [model.driver_branch.expression_encoder, model.source_branch.source_warp, model.generator.driver_warp]
    if getattr(model.generator, "source_pixels", None) is not None:
        image_generator = model.generator.image_generator
        modules += [model.generator.source_pixels, image_generator.source_inputs, image_generator.source_blend]
    if getattr(model.generator, "expression_edit", None) is not None:
        modules.append(model.generator.expression_edit)
    return [p for module in modules for p in module.parameters()]


class PoseParameters(nn.Module):
    """image -> (scale (N, 3), yaw/pitch/roll (N, 3), translation (N, 3)) of the pose regressor;
    with an ``expression_encoder``, ((those), expression code (N, Z)).

    The encoder reads the crop its pose aligns, as in the model, but the pose is detached: the
    expression labels teach the encoder, not where the regressor puts the head."""

    def __init__(self, regressor: nn.Module, expression_encoder: nn.Module | None = None):
        super().__init__()
        self.regressor = regressor
        self.expression_encoder = expression_encoder

    def forward(self, image: torch.Tensor) -> tuple:
        parameters = self.regressor.pose_parameters(image)
        if self.expression_encoder is None:
            return parameters
        return parameters, self.expression_encoder(image, pose_matrix(*parameters).detach())


def pose_targets(batch: dict, expression: bool = False) -> tuple:
    """Images and their ground-truth pose parameters, (scale, yaw, pitch, roll, tx, ty, tz);
    with ``expression``, their expression parameters as a third element.

    Both frames of both pairs are used (four labelled images per item). The driver images are
    the reconstruction targets, not the augmented motion inputs: their pose is the label.
    """
    images, params, expressions = [], [], []
    for image_key in ("source", "driver", "source2", "driver2"):
        label_key = f"{image_key}_pose_params"
        if image_key in batch and label_key in batch:
            images.append(batch[image_key])
            params.append(batch[label_key])
            if expression:
                if f"{image_key}_expression_params" not in batch:
                    raise ValueError("expression labels in pose pretraining need *_expression_params: "
                                     "use synthetic data ([data] kind = \"synthetic\")")
                expressions.append(batch[f"{image_key}_expression_params"])
    if not images:
        raise ValueError("pose pretraining needs ground-truth poses (*_pose_params): "
                         "use synthetic data ([data] kind = \"synthetic\") for this stage")
    if expression:
        return torch.cat(images), torch.cat(params), torch.cat(expressions)
    return torch.cat(images), torch.cat(params)


def pose_parameter_loss(predicted: tuple, target: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and true pose parameters (scale on a log scale, angles in radians)."""
    scale, rotation, translation = predicted
    true_scale = target[:, :1].expand_as(scale)
    return (F.l1_loss(torch.log(scale), torch.log(true_scale))
            + F.l1_loss(rotation, target[:, 1:4])
            + F.l1_loss(translation, target[:, 4:7]))


def foreground_mask(batch: dict, key: str = "driver") -> torch.Tensor:
    """The (N, 1, S, S) foreground mask of ``batch[key]``, which a matte model cannot train without."""
    mask = batch.get(f"{key}_mask")
    if mask is None:
        raise ValueError(f"a model with a matte trains on the foreground only and needs foreground masks "
                         f"({key}_mask) in its data: the synthetic heads have them, video folders do not")
    return mask


def composite(image: torch.Tensor, matte: torch.Tensor | None, background: torch.Tensor) -> torch.Tensor:
    """``image`` over ``background`` through ``matte``; ``image`` itself for a model without one."""
    return image if matte is None else matte * image + (1 - matte) * background


_PAIRS_CARRY_IT = "the pairs' %s: set [data] expression_regions = true (synthetic heads)"


def _required(value, term: str, what: str):
    """``value``, or the one-line error of a loss term whose input is missing (``what`` it needs)."""
    if value is None:
        raise ValueError(f"the {term} loss needs {what}")
    return value


class ReenactmentPass(nn.Module):
    """The generator side of one step, wrapped whole by DDP.

    Returns ``prediction`` (source reenacted by its own identity's driver) and, with ``cycle``,
    ``cross_prediction`` (the second identity's source driven by the same driver) plus the
    motion codes of the cycle loss: z_{s->d} and z_{s*->d} (expression codes read back from the
    two predictions), z_d and z_{d*} (of the two drivers). A matte model's predictions are read
    back composited over their own source, as the runtime would show them.
    """

    def __init__(self, model: nn.Module, cycle: bool, true_poses: bool = False):
        super().__init__()
        self.model = model
        self.cycle = cycle
        self.true_poses = true_poses

    def forward(self, batch: dict) -> dict:
        driver_input = batch.get("driver_input", batch["driver"])
        poses = ()
        if self.true_poses:   # [train] true_poses: the oracle of an exact motion
            poses = tuple(pose_from_parameters(batch[f"{image}_pose_params"]) for image in ("source", "driver"))
        out = self.model(batch["source"], driver_input, *poses)
        result = {"prediction": out["image"], "matte": out["matte"],
                  "source_deformation": out["source_deformation"], "driver_deformation": out["driver_deformation"],
                  "warped_source": out.get("warped_source"), "edited_source": out.get("edited_source"),
                  "source_flow": out.get("source_flow"),
                  "source_expression": out["avatar"].expression, "driver_expression": out["driver_expression"]}
        if self.cycle:
            from ..model import split_matte

            driver = self.model.driver_branch
            avatar2 = self.model.source_branch(batch["source2"])
            cross, cross_matte = split_matte(self.model.reenact(avatar2, out["motion"]))
            cross = composite(cross, cross_matte, batch["source2"])
            driver2_input = batch.get("driver2_input", batch["driver2"])
            result.update({
                "cross_prediction": cross,
                "z_prediction": driver(composite(out["image"], out["matte"], batch["source"])).expression,
                "z_cross_prediction": driver(cross).expression,
                "z_driver": out["driver_expression"],
                "z_driver2": driver(driver2_input).expression,
            })
        return result


class LossComputer:
    """The weighted generator loss of a step and the discriminator's hinge loss.

    Weights are :class:`losses.LossWeights` (the paper's defaults) overridden by the config's
    ``[losses.weights]``; a term with weight 0 is not computed at all (the perceptual network
    is not even built), which is what makes a cheap CPU recipe cheap.
    """

    def __init__(self, weights: dict, device: torch.device, l1_scales: int = 1):
        from .. import losses

        unknown = sorted(set(weights) - set(losses.TERM_NAMES))
        if unknown:
            raise ValueError(f"[losses.weights] has unknown term(s) {', '.join(unknown)}; "
                             f"known: {', '.join(losses.TERM_NAMES)}")
        self.weights = losses.LossWeights(**{k: float(v) for k, v in weights.items()})
        self.l1_scales = l1_scales
        self.perceptual = None
        if self.weights.perceptual:
            self.perceptual = losses.PerceptualLoss().to(device)

    def weights_dict(self) -> dict:
        return self.weights.as_dict()

    def weights_use_gan(self) -> bool:
        return self.weights.adversarial > 0 or self.weights.feature_matching > 0

    def pose(self, predicted: tuple, target: torch.Tensor) -> torch.Tensor:
        return pose_parameter_loss(predicted, target)

    def generator(self, outputs: dict, batch: dict, critic: nn.Module | None) -> tuple:
        """(total loss, {term: weighted value}) of the generator side."""
        from .. import losses

        prediction, target, matte = outputs["prediction"], batch["driver"], outputs.get("matte")
        terms = {}
        if matte is not None:
            foreground = foreground_mask(batch)
            if self.weights.matte:
                terms["matte"] = losses.multiscale_l1(matte, foreground, scales=self.l1_scales)
            prediction, target = prediction * foreground, target * foreground
        if self.perceptual is not None:
            terms.update(self.perceptual(prediction, target))
        if self.weights.l1:
            terms["l1"] = losses.multiscale_l1(prediction, target, scales=self.l1_scales)
        for term, key, what in (("expression", "driver_expression_region", "expression regions"),
                                ("features", "driver_feature_region", "face-feature regions")):
            if getattr(self.weights, term):
                region = batch.get(key)
                if region is None:
                    raise ValueError(f"the {term} loss needs the pairs' {what}: set [data] "
                                     "expression_regions = true (synthetic heads)")
                terms[term] = losses.region_l1(prediction, target, region)
        if self.weights.source_warp:
            warped = outputs.get("warped_source")
            if warped is None or matte is None:
                raise ValueError("the source_warp loss needs a model with the source-pixel path and a matte "
                                 "(preset demo128_ws, tiny_ws)")
            terms["source_warp"] = losses.multiscale_l1(warped * foreground, target, scales=self.l1_scales)
        if self.weights.expression_edit:
            edited = _required(outputs.get("edited_source"), "expression_edit",
                               "a model with the expression edit (preset demo128_wse, tiny_wse)")
            target_edit = _required(batch.get("source_edit_target"), "expression_edit", _PAIRS_CARRY_IT % "edit targets")
            terms["expression_edit"] = (losses.multiscale_l1(edited, target_edit, scales=self.l1_scales)
                                        + losses.region_l1(edited, target_edit, batch["source_edit_region"]))
        if self.weights.source_flow:
            flow = _required(outputs.get("source_flow"), "source_flow",
                             "a model with the source-pixel path (preset demo128_ws, tiny_ws)")
            truth = _required(batch.get("driver_correspondence"), "source_flow", _PAIRS_CARRY_IT % "true correspondence")
            terms["source_flow"] = losses.region_l1(flow, truth, batch["driver_correspondence_seen"], scales=1)
        if self.weights.expression_labels:
            if "source_expression_params" not in batch or "driver_expression_params" not in batch:
                raise ValueError("the expression_labels loss needs the synthetic heads' expression parameters "
                                 "(*_expression_params): use synthetic data ([data] kind = \"synthetic\")")
            terms["expression_labels"] = 0.5 * (
                losses.expression_label_loss(outputs["source_expression"], batch["source_expression_params"])
                + losses.expression_label_loss(outputs["driver_expression"], batch["driver_expression_params"]))
        # the image a user sees: for a matte model composited over the true background, the driver
        # with its person removed (over the whole driver, a matte of 0 would let the true person
        # through and score a perfect reconstruction); the composite term trains it, the log reads it
        shown = outputs["prediction"] if matte is None else composite(outputs["prediction"], matte,
                                                                      batch["driver"] * (1 - foreground))
        if self.weights.composite:
            _required(matte, "composite", "a model with a matte (ModelConfig.matte)")
            terms["composite"] = F.mse_loss(shown, batch["driver"])
        if critic is not None:
            fake = critic(prediction)
            with torch.no_grad():
                real = critic(target)
            terms["adversarial"] = losses.generator_hinge_loss(fake)
            terms["feature_matching"] = losses.feature_matching_loss(fake, real)
        if "z_prediction" in outputs and self.weights.cycle:
            terms["cycle"] = losses.motion_cycle_loss(outputs["z_prediction"], outputs["z_cross_prediction"],
                                                      outputs["z_driver"], outputs["z_driver2"])
        total, logged = losses.combine_losses(terms, self.weights)
        logged["reconstruction_l1"] = float(F.l1_loss(shown.detach(), batch["driver"]))
        return total, logged

    def discriminator(self, critic: nn.Module, outputs: dict, batch: dict) -> tuple:
        """Hinge loss of the discriminator on real drivers and (detached) predictions."""
        from .. import losses

        real, fake = batch["driver"], outputs["prediction"].detach()
        if outputs.get("matte") is not None:   # the foreground only, as the generator's losses
            foreground = foreground_mask(batch)
            real, fake = real * foreground, fake * foreground
        real, fake = critic(real), critic(fake)
        loss = losses.discriminator_hinge_loss(real, fake)
        return loss, {"discriminator": float(loss.detach())}

    @staticmethod
    def image_columns(outputs: dict, batch: dict) -> list:
        """Columns of the logged image grid: source, driver, prediction (+ matte; + source2, cross).

        A matte model's prediction is shown composited over its source, with its matte beside it."""
        matte = outputs.get("matte")
        columns = [batch["source"], batch["driver"], composite(outputs["prediction"], matte, batch["source"])]
        if matte is not None:
            columns.append(matte.expand(-1, 3, -1, -1))
        if "cross_prediction" in outputs:
            columns += [batch["source2"], outputs["cross_prediction"]]
        return columns


def build_discriminator(channels: int, scales: int, device: torch.device) -> nn.Module:
    from ..losses import MultiScaleDiscriminator

    return MultiScaleDiscriminator(num_scales=scales, base_channels=channels).to(device)


def build_training_dataset(cfg, image_size: int):
    """The training set the config names (synthetic heads or a folder of talking-head videos)."""
    from ..data import PairAugmentation, SyntheticTalkingHeads, TalkingHeadVideos

    augmentation = PairAugmentation() if cfg.data.augment else None
    if cfg.data.kind == "synthetic" and cfg.data.expression_regions:
        from ..data.expression_pairs import ExpressionPairHeads

        return ExpressionPairHeads(num_identities=cfg.data.train_identities, size=image_size, seed=cfg.data.seed,
                                   split="train", strong_fraction=cfg.data.strong_expression_fraction,
                                   same_pose_fraction=cfg.data.same_pose_fraction)
    if cfg.data.kind == "synthetic":
        return SyntheticTalkingHeads(num_identities=cfg.data.train_identities, size=image_size,
                                     seed=cfg.data.seed, split="train", augmentation=augmentation)
    return TalkingHeadVideos(cfg.data.root, size=image_size, seed=cfg.data.seed, augmentation=augmentation)


def build_pose_dataset(cfg, image_size: int, training_set):
    """What the head-pose regressor is pretrained on: images with ground-truth poses.

    Synthetic heads carry them, so they are their own pose set. Real videos do not (the paper
    fitted poses to 3D landmarks, which is not available here), so with video data the
    regressor is pretrained on synthetic heads of the same size; use ``main_stage = "low_lr"``
    to let it adapt to real faces during the main stage.

    The expression pairs (``[data] expression_regions``) are not a good set for this stage: for
    the expression encoder's labels (``[pose_pretrain] expression_labels``) their sources are at
    rest and their drivers show one or two parts at a time, so most parameters barely vary; for
    the regressor, their drivers keep the source's pose as often as ``same_pose_fraction`` says,
    and each item draws five images of which the stage reads two. Random heads, where every pose
    and all six parameters vary in every image, are the set then.
    """
    on_pairs = cfg.data.kind == "synthetic" and cfg.data.expression_regions
    if (cfg.data.kind == "synthetic" and not on_pairs) or cfg.pose_pretrain.steps == 0:
        return training_set
    from ..data import SyntheticTalkingHeads

    return SyntheticTalkingHeads(num_identities=max(2, cfg.data.train_identities), size=image_size,
                                 seed=cfg.data.seed, split="train")
