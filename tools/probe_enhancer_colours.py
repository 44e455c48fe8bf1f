"""Probe: does the demo128 enhancer learn its colours on clean super-resolution pairs, and which
layout lets it? (issue 15; docs/demo_model.md, "The demo enhancer").

Session 5's enhancer learned only its matte: its colours stayed bicubic's. The SGD variants train
G_enh on the SR pairs alone (L1 or squared error at weight 300 + 1 - SSIM, AdamW betas (0.9, 0.999),
lr cosine to 1e-5 with an optional warm-up, batch 4, seed 0), the network module's layouts:

- ``plain``: the paper's layout (no skips, no linear path, no gate);
- ``skip``: the plain layout with the bicubic image fed to the high-resolution blocks only
  (session 5's variant, kept here: not a network option);
- ``unet``: ``skips`` on (stem -> first stage, bicubic -> high blocks and the last conv);
- ``gated``: ``unet`` with the contrast gate (``--gate``, default 1e-4).

``fitted`` trains nothing: it sets the demo128 preset's linear path to the least-squares filter of
the first STEPS pairs (``least_squares_linear_path``), gate ``--gate``, and also scores the base
model's renderings (``evaluate-enhancer``'s protocol; needs the recovered base,
``tools/checkpoint_from_bundle.py``). All score clean SR on the first 16 held-out pairs:

    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py plain 200 --lr 2e-4 --warmup 50
    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py gated 300 --warmup 50 --pixel-loss mse --ssim-weight 0
    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py fitted 128 --gate 1e-2

(Session 6's unet/gated figures in docs/demo_model.md were measured with this tool's own copy of
those layouts, the same computation, before they became network options; parameters are created
in another order now, so the random initialisation and the figures may differ slightly.)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from megaportraits_export.data.enhancement import SyntheticEnhancementPairs
from megaportraits_export.evaluation.pairs import DEFAULT_HELDOUT_IDENTITIES, heldout_pairs
from megaportraits_export.losses import ssim_loss
from megaportraits_export.metrics import psnr, ssim
from megaportraits_export.networks.blocks import plain_conv
from megaportraits_export.networks.enhancer import SCALE, Enhancer, get_enhancer_config
from megaportraits_export.training.enhancement import colour_pairs, least_squares_linear_path
from megaportraits_export.training.optim import build_adamw, cosine_schedule

BASE_CHECKPOINT = "runs/demo128_from_bundle/model_last.pt"


class SkipEnhancer(Enhancer):
    """G_enh with the bicubic image fed to its high-resolution blocks (a full-resolution path)."""

    def __init__(self, config):
        super().__init__(config)
        width = config.up_channels[-1]
        self.fuse = plain_conv(2, width + config.channels, width, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.decoder(self.encoder(image))
        for stage in self.up_stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="nearest"))
        upsampled = F.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        x = self.high(self.fuse(torch.cat([x, upsampled], 1)))
        return torch.clamp(upsampled + self.to_residual(x), 0.0, 1.0)


def build(variant: str, gate: float) -> Enhancer:
    plain = get_enhancer_config("demo128").replace(skips=False, linear_taps=0, contrast_gate=0.0)
    if variant == "skip":
        return SkipEnhancer(plain)
    return Enhancer({"plain": plain, "unet": plain.replace(skips=True),
                     "gated": plain.replace(skips=True, contrast_gate=gate),
                     "fitted": plain.replace(linear_taps=6, contrast_gate=gate)}[variant])


def train(model: Enhancer, data, args) -> None:
    optimizer = build_adamw([{"params": list(model.parameters()), "lr": args.lr}], (0.9, 0.999), 1e-2)
    schedule = cosine_schedule(optimizer, args.steps, args.lr, min(1e-5, args.lr), args.warmup)
    for step in range(args.steps):
        items = [data[step * 4 + i] for i in range(4)]
        low, high = (torch.stack([item[k] for item in items]) for k in ("low", "high"))
        out = model(low)
        pixel = (F.l1_loss(out, high) if args.pixel_loss == "l1"
                 else F.mse_loss(out, high) / 0.03)  # about L1's gradient at a 0.03 error
        loss = 300 * pixel + args.ssim_weight * ssim_loss(out[:, :3], high[:, :3])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps}: loss {float(loss.detach()):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=("plain", "skip", "unet", "gated", "fitted"))
    parser.add_argument("steps", type=int, help="SGD steps, or for 'fitted' the SR pairs of the least-squares fit")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="steps of linear warm-up to the peak, within the cosine (default 0)")
    parser.add_argument("--pixel-loss", choices=("l1", "mse"), default="l1",
                        help="the pixel term at weight 300: L1 (the recipe's) or squared error x 300 / 0.03")
    parser.add_argument("--ssim-weight", type=float, default=300.0, help="weight of 1 - SSIM (default 300)")
    parser.add_argument("--gate", type=float, default=1e-4, help="contrast gate k for gated/fitted (default 1e-4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(args.variant, args.gate)
    data = SyntheticEnhancementPairs(1000, model.config.base_size, seed=0, with_mask=True)
    started = time.monotonic()
    if args.variant == "fitted":
        least_squares_linear_path(model, colour_pairs(data, args.steps))
        what = f"fitted on {args.steps} pairs, gate {args.gate:g}"
    else:
        train(model, data, args)
        what = (f"{args.steps} steps, lr {args.lr:g}, warm-up {args.warmup}, {args.pixel_loss}, "
                f"SSIM x {args.ssim_weight:g}")
    model.eval()
    pairs = heldout_pairs(16, 2 * model.config.base_size, 0, DEFAULT_HELDOUT_IDENTITIES)
    with torch.no_grad():
        down = F.avg_pool2d(torch.cat([pairs.target, pairs.target_mask], 1), 2)
        enhanced = model(down)[:, :3]
        bicubic = F.interpolate(down, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)[:, :3]
        weights = model.to_residual[-1].weight.abs().mean(dim=(1, 2, 3))
    print(f"{args.variant}, {what} ({time.monotonic() - started:.0f} s): SR PSNR "
          f"{psnr(enhanced, pairs.target).mean():.4f} vs bicubic {psnr(bicubic, pairs.target).mean():.4f}, SSIM "
          f"{ssim(enhanced, pairs.target).mean():.5f} vs {ssim(bicubic, pairs.target).mean():.5f}; residual "
          f"weights (R, G, B, matte) {[round(float(w), 5) for w in weights]}")
    if args.variant == "fitted":
        from megaportraits_export.checkpoint import load_model_from_checkpoint
        from megaportraits_export.evaluation.enhancement import enhancement_scores, format_scores

        base, _, _ = load_model_from_checkpoint(BASE_CHECKPOINT)
        print(format_scores(enhancement_scores(base, model, pairs=16)))


if __name__ == "__main__":
    main()
