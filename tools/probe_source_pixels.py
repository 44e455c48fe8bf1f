#!/usr/bin/env python3
"""How good is a model's source-pixel path? Its warped source image against the truth.

    python tools/probe_source_pixels.py CHECKPOINT [more checkpoints] [--pairs 48]

Why: a model with the source-pixel path (``ModelConfig.warped_source``,
networks/source_pixels.py) can only show the source's own eyes, brows and mouth where its warped
source image lands on the truth; until it does, G2D has no reason to blend it in. On the
expression evaluation's cross-reenactment pairs (``expression-eval``: neutral sources, drivers
with strong expressions, relative motion), this scores the warped source alone, with the
driver's expression code and with the source's own, on the target's person and on the
expression region, beside the model's rendering on the person and the source left unchanged.
A checkpoint of ``demo128``'s recovered weights is built as ``demo128_ws`` (its path as
initialised: the poses' rigid motion at the mean depth). Also prints the blend's bias (G2D uses
the warped source where its mask opens) and checks that the source driven by its own motion comes
back unmoved (PSNR 100 = identical away from the 8-pixel border). For a model with the expression
edit (networks/expression_edit.py), also the edited source against the source drawn with the
driver's expression, on the pixels where that differs from the source, beside the source itself.
"""
from __future__ import annotations

import argparse
import sys


def load(path: str):
    from megaportraits_export.checkpoint import initialise_from_checkpoint, load_model_from_checkpoint
    from megaportraits_export.model import build_model

    model, config, _ = load_model_from_checkpoint(path)
    if config.warped_source:
        return model
    if config.name != "demo128":
        raise SystemExit(f"error: {path} holds a {config.name} model without the source-pixel path; "
                         "give a checkpoint of a model with warped_source (or of demo128)")
    model = build_model("demo128_ws").eval()
    initialise_from_checkpoint(model, path)
    return model


def probe(model, pairs) -> dict:
    import torch

    from megaportraits_export.evaluation import relative_motion
    from megaportraits_export.data.expression_pairs import REGION_THRESHOLD
    from megaportraits_export.expression_eval import region_psnr

    def on(image, where):
        return float(region_psnr(image, pairs.target, where).mean())

    generator = model.generator
    figures = {}
    with torch.no_grad():
        avatar = model.source_branch(pairs.source)
        pose, expression = relative_motion((avatar.pose, avatar.expression),
                                           tuple(model.driver_branch(pairs.driver)),
                                           tuple(model.driver_branch(pairs.reference)))
        for name, code in (("driver_code", expression), ("source_code", avatar.expression)):
            rendering, _, warped, edited, _ = generator.render(avatar.canonical_volume, avatar.global_descriptor,
                                                               pose, code, *avatar.source_pixels)
            figures[name] = {"warped_person": on(warped, pairs.target_mask), "warped_region": on(warped, pairs.region),
                             "rendering_person": on(rendering[:, :3], pairs.target_mask)}
            if edited is not None and name == "driver_code":
                changed = (pairs.edit_target - pairs.source).abs().amax(dim=1, keepdim=True) > REGION_THRESHOLD / 255
                figures["edit"] = {"edited": float(region_psnr(edited, pairs.edit_target, changed).mean()),
                                   "source": float(region_psnr(pairs.source, pairs.edit_target, changed).mean())}
        figures["unchanged"] = {"person": on(pairs.source, pairs.target_mask), "region": on(pairs.source, pairs.region)}
        unmoved = generator.render(avatar.canonical_volume, avatar.global_descriptor, avatar.pose,
                                   avatar.expression, *avatar.source_pixels).warped
        inner = (..., slice(8, -8), slice(8, -8))
        figures["self_driven_psnr"] = float(region_psnr(unmoved[inner], pairs.source[inner],
                                                        torch.ones_like(pairs.region)[inner]).mean())
    figures["blend_bias"] = float(generator.image_generator.source_blend.bias.detach())
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--pairs", type=int, default=48)
    args = parser.parse_args(argv)
    import torch

    from megaportraits_export.expression_eval import expression_pairs

    torch.set_num_threads(1)
    pairs = expression_pairs(args.pairs, 128)
    for path in args.checkpoints:
        f = probe(load(path), pairs)
        d, s, u = f["driver_code"], f["source_code"], f["unchanged"]
        print(f"{path}: warped source on the person {d['warped_person']:.2f} (source's code {s['warped_person']:.2f}), "
              f"region {d['warped_region']:.2f} ({s['warped_region']:.2f}); rendering on the person "
              f"{d['rendering_person']:.2f} ({s['rendering_person']:.2f}); unchanged source {u['person']:.2f} / "
              f"{u['region']:.2f}; self-driven {f['self_driven_psnr']:.2f} dB; blend bias {f['blend_bias']:.3f}"
              + (f"; edited source {f['edit']['edited']:.2f} where the expression changes it (the source "
                 f"{f['edit']['source']:.2f})" if "edit" in f else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
