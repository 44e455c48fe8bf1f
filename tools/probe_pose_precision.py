"""How precise must the head poses be for the driver's expression to show? The pixel path's ceiling.

Why: on the expression evaluation's pairs (megaportraits_export/expression_eval.py) every trial of
issue 13 has stayed between +0.1 and +0.9 dB of expression gain, however the expression was
carried (codes, warps, the expression edit). This probe takes the networks out: it moves the
*perfect* expression edit (the source drawn with the driver's expression, in its own pose: the
pairs' ``edit_target``) and the source itself with the rigid motion of the head, as the
source-pixel path (networks/source_pixels.py) does, but on the true depth of each pixel (the
skull's surface, data/synthetic/correspondence.py), and scores both on the expression region as
the evaluation does. Their difference is the expression gain a model would have with a perfect
edit and a perfect depth: what the poses alone allow.

It prints:
- the true correspondence (the renderer's perspective camera, the true poses): the ceiling;
- the same motion with the model's camera (orthographic: the volume's x and y are the image's);
- the motion from poses with errors of the size a regressor makes, composed as the SDK's relative
  motion composes three regressions (theta_d theta_d0^-1 theta_s), for rotation errors of 0.25-4
  degrees (and translations of 0.3 px);
- for each checkpoint given: its head-pose regressor's errors on the pairs' images, and the
  ceilings with its own relative poses; and with one part of them exact: the source's pose, or
  the driver's motion against its reference (theta_d theta_d0^-1, the reference being in the
  source's pose).

    python tools/probe_pose_precision.py [CKPT ...] [--pairs 48] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from megaportraits_export import command
from megaportraits_export.data import synthetic
from megaportraits_export.data.synthetic.camera import CAMERA_DISTANCE
from megaportraits_export.data.synthetic.correspondence import pixel_centres, skull_correspondence, skull_points
from megaportraits_export.expression_eval import ExpressionPairs, expression_pairs, region_psnr
from megaportraits_export.networks.source_pixels import project, unproject
from megaportraits_export.warp import invert_pose, pose_from_parameters, transform_points

ROTATION_ERRORS_DEG = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
TRANSLATION_ERROR = 0.005  # normalised units, each row's translation error: 0.32 px at 128 px
NOISE_DRAWS = 3


def _compose_relative(source, driver, reference):
    """theta_d theta_d0^-1 theta_s for (N, 3, 4) poses (evaluation.relative_motion's pose)."""
    def homogeneous(pose):
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=pose.dtype).expand(pose.shape[0], 1, 4)
        return torch.cat((pose, bottom), dim=1)
    return (homogeneous(driver) @ homogeneous(invert_pose(reference)) @ homogeneous(source))[:, :3]


class PixelMotion:
    """The source's pixels moved by a rigid motion on the true depth of each driver pixel, with
    the source-pixel path's cameras (networks/source_pixels.py)."""

    def __init__(self, pairs: ExpressionPairs):
        size = pairs.source.shape[-1]
        points, hits = [], []
        x, y = pixel_centres(size)
        for (person, _), (_, driver_pose) in zip(pairs.identities, pairs.poses):
            _, depth, hit = skull_points(synthetic.Identity.sample(person), driver_pose, size)
            points.append(np.stack([x, y, depth], axis=-1))
            hits.append(hit)
        self.points = torch.from_numpy(np.stack(points)).float()[:, None]   # (N, 1, S, S, 3)
        self.hit = torch.from_numpy(np.stack(hits))

    def grid(self, relative: torch.Tensor, source: torch.Tensor, perspective: bool) -> torch.Tensor:
        """Where each driver pixel reads the source: theta_s^-1 theta p on the skull, the pixel
        itself elsewhere; ``perspective``: the renderer's camera, else the model's orthographic one."""
        p = unproject(self.points, CAMERA_DISTANCE) if perspective else self.points
        c = transform_points(invert_pose(source), transform_points(relative, p))[:, 0]
        xy = (project(c, CAMERA_DISTANCE) if perspective else c)[..., :2]
        return torch.where(self.hit[..., None], xy, self.points[:, 0, ..., :2])


def _warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def ceiling(pairs: ExpressionPairs, grid: torch.Tensor) -> dict:
    """Region PSNR of the perfect edit and of the source moved by ``grid``, and their difference."""
    edit = float(region_psnr(_warp(pairs.edit_target, grid), pairs.target, pairs.region).nanmean())
    source = float(region_psnr(_warp(pairs.source, grid), pairs.target, pairs.region).nanmean())
    return {"edit": round(edit, 2), "source": round(source, 2), "gain": round(edit - source, 2)}


def regressor_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean absolute errors of (N, 9) regressed (scale, rotation, translation) against (N, 7) true
    model parameters: degrees, normalised units, log-scale."""
    rotation = (predicted[:, 3:6] - truth[:, 1:4]).abs().mean(0) * 180.0 / math.pi
    return {"yaw_deg": round(float(rotation[0]), 2), "pitch_deg": round(float(rotation[1]), 2),
            "roll_deg": round(float(rotation[2]), 2),
            "translation": round(float((predicted[:, 6:8] - truth[:, 4:6]).abs().mean()), 4),
            "log_scale": round(float((torch.log(predicted[:, 0] / truth[:, 0])).abs().mean()), 4)}


def probe(pairs: ExpressionPairs, checkpoints: list[str]) -> dict:
    motion = PixelMotion(pairs)
    size = pairs.source.shape[-1]
    true_grid = []
    for (person, _), (source_pose, driver_pose) in zip(pairs.identities, pairs.poses):
        points, _ = skull_correspondence(synthetic.Identity.sample(person), source_pose, driver_pose, size)
        true_grid.append(points)
    source_params = torch.from_numpy(np.stack([p.model_parameters() for p, _ in pairs.poses]))
    driver_params = torch.from_numpy(np.stack([p.model_parameters() for _, p in pairs.poses]))
    theta_s, theta_d = pose_from_parameters(source_params), pose_from_parameters(driver_params)
    result = {"true_correspondence": ceiling(pairs, torch.from_numpy(np.stack(true_grid))),
              "true_poses_orthographic": ceiling(pairs, motion.grid(theta_d, theta_s, perspective=False)),
              "noisy_poses": {}}
    generator = torch.Generator().manual_seed(0)
    for degrees in ROTATION_ERRORS_DEG:
        draws = []
        for _ in range(NOISE_DRAWS):
            def noisy(params):
                noise = torch.zeros_like(params)
                noise[:, 1:4] = torch.randn(params.shape[0], 3, generator=generator) * math.radians(degrees)
                noise[:, 4:6] = torch.randn(params.shape[0], 2, generator=generator) * TRANSLATION_ERROR
                return pose_from_parameters(params + noise)
            # three regressions: the source, the driver, the driver's reference (in the source's pose)
            estimated_source = noisy(source_params)
            relative = _compose_relative(estimated_source, noisy(driver_params), noisy(source_params))
            draws.append(ceiling(pairs, motion.grid(relative, estimated_source, perspective=True)))
        result["noisy_poses"][f"{degrees} deg, {TRANSLATION_ERROR * size / 2:.2f} px"] = {k: round(float(np.mean([d[k] for d in draws])), 2) for k in draws[0]}
    if checkpoints:
        from megaportraits_export.checkpoint import load_model_from_checkpoint

        result["checkpoints"] = {}
        for path in checkpoints:
            model = load_model_from_checkpoint(path)[0].eval()
            regressor = model.driver_branch.head_pose
            with torch.no_grad():
                source, driver, reference = (model.driver_branch(images)[0]
                                             for images in (pairs.source, pairs.driver, pairs.reference))
                predicted = torch.cat([torch.cat(regressor.pose_parameters(images), dim=1)
                                       for images in (pairs.source, pairs.driver)])
            relative = _compose_relative(source, driver, reference)
            result["checkpoints"][path] = {
                "regressor_errors": regressor_errors(predicted, torch.cat((source_params, driver_params))),
                "orthographic": ceiling(pairs, motion.grid(relative, source, perspective=False)),
                "perspective": ceiling(pairs, motion.grid(relative, source, perspective=True)),
                # which regression costs what: one of them made exact
                "perspective, the source's pose exact": ceiling(pairs, motion.grid(
                    _compose_relative(theta_s, driver, reference), theta_s, perspective=True)),
                "perspective, the driver's motion exact": ceiling(pairs, motion.grid(
                    _compose_relative(source, theta_d, theta_s), source, perspective=True))}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoints whose head-pose regressor to score")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its folder does not exist")
    return command.run(_probe, args)   # a missing or foreign checkpoint, an unwritable --json: one line


def _probe(args) -> int:
    pairs = expression_pairs(args.pairs, 128)
    result = probe(pairs, args.checkpoints)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:   # whole or not at all
        partial = args.json + ".partial"
        with open(partial, "w") as f:
            f.write(text + "\n")
        os.replace(partial, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
