"""Probe: does the demo128 enhancer learn its colours on clean super-resolution pairs alone, and
does a full-resolution path help? (issue 15; docs/demo_model.md, "The demo enhancer").

The shipped recipe's enhancer learned only its matte: its colours stayed bicubic's. This trains
the same network on the SR pairs alone (L1 300 + 1 - SSIM 300, AdamW betas (0.9, 0.999), lr 1e-3
cosine to 1e-5, batch 4, seed 0), either as it is (``plain``) or with the bicubic image
concatenated into the high-resolution blocks through one conv (``skip``, a variant not in the
network module), and scores clean SR on the first 16 held-out pairs against bicubic:

    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py plain 200
    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py skip 200
    OMP_NUM_THREADS=1 python tools/probe_enhancer_colours.py plain 200 --lr 2e-4 --warmup 50
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
from torch import nn

from megaportraits_export.networks.blocks import group_norm, plain_conv
from megaportraits_export.networks.enhancer import SCALE, Enhancer, get_enhancer_config
from megaportraits_export.training.optim import build_adamw, cosine_multiplier


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


class UNetEnhancer(Enhancer):
    """G_enh with skips: the stem's features join the first upsampling stage (at the base side),
    the bicubic image joins the high-resolution blocks and is read by the last conv (a linear
    full-resolution path: a sharpening filter learns directly)."""

    def __init__(self, config):
        super().__init__(config)
        low, high = config.up_channels
        self.fuse_base = plain_conv(2, low + config.stem_channels, low, 3)
        self.fuse_high = plain_conv(2, high + config.channels, high, 3)
        self.to_residual = nn.ModuleDict({"norm": nn.Sequential(group_norm(high), nn.ReLU()),
                                          "conv": plain_conv(2, high + config.channels, config.channels, 3)})
        with torch.no_grad():
            self.to_residual["conv"].weight.zero_()
            self.to_residual["conv"].bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        stem = self.encoder[0](image)
        x = self.decoder(self.encoder[2](self.encoder[1](stem)))
        x = self.fuse_base(torch.cat([self.up_stages[0](F.interpolate(x, scale_factor=2, mode="nearest")), stem], 1))
        x = self.up_stages[1](F.interpolate(x, scale_factor=2, mode="nearest"))
        upsampled = F.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        x = self.high(self.fuse_high(torch.cat([x, upsampled], 1)))
        residual = self.to_residual["conv"](torch.cat([self.to_residual["norm"](x), upsampled], 1))
        return torch.clamp(upsampled + residual, 0.0, 1.0)


class GatedEnhancer(UNetEnhancer):
    """UNetEnhancer whose colour residual is scaled by the local contrast of the bicubic image,
    v / (v + 1e-4) with v the 5x5 variance of its grey level: flat regions stay bicubic's exactly."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        stem = self.encoder[0](image)
        x = self.decoder(self.encoder[2](self.encoder[1](stem)))
        x = self.fuse_base(torch.cat([self.up_stages[0](F.interpolate(x, scale_factor=2, mode="nearest")), stem], 1))
        x = self.up_stages[1](F.interpolate(x, scale_factor=2, mode="nearest"))
        upsampled = F.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        x = self.high(self.fuse_high(torch.cat([x, upsampled], 1)))
        residual = self.to_residual["conv"](torch.cat([self.to_residual["norm"](x), upsampled], 1))
        grey = upsampled[:, :3].mean(1, keepdim=True)
        mean = F.avg_pool2d(grey, 5, 1, 2, count_include_pad=False)
        var = (F.avg_pool2d(grey * grey, 5, 1, 2, count_include_pad=False) - mean * mean).clamp_min(0)
        gate = var / (var + 1e-4)
        residual = torch.cat([residual[:, :3] * gate, residual[:, 3:]], 1)
        return torch.clamp(upsampled + residual, 0.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=("plain", "skip", "unet", "gated"))
    parser.add_argument("steps", type=int)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="steps of linear warm-up to the peak, within the cosine (default 0)")
    parser.add_argument("--pixel-loss", choices=("l1", "mse"), default="l1",
                        help="the pixel term at weight 300: L1 (the recipe's) or squared error x 300 / 0.03")
    parser.add_argument("--ssim-weight", type=float, default=300.0, help="weight of 1 - SSIM (default 300)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = get_enhancer_config("demo128")
    model = {"plain": Enhancer, "skip": SkipEnhancer, "unet": UNetEnhancer, "gated": GatedEnhancer}[args.variant](config)
    data = SyntheticEnhancementPairs(1000, config.base_size, seed=0, with_mask=True)
    optimizer = build_adamw([{"params": list(model.parameters()), "lr": args.lr}], (0.9, 0.999), 1e-2)
    cosine = cosine_multiplier(args.steps, args.lr, min(1e-5, args.lr))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine(step) * min(1.0, (step + 1) / args.warmup) if args.warmup else cosine(step))
    started = time.monotonic()
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
            print(f"step {step + 1}/{args.steps}: loss {float(loss):.4f}", flush=True)
    model.eval()
    pairs = heldout_pairs(16, 2 * config.base_size, 0, DEFAULT_HELDOUT_IDENTITIES)
    with torch.no_grad():
        down = F.avg_pool2d(torch.cat([pairs.target, pairs.target_mask], 1), 2)
        enhanced = model(down)[:, :3]
        bicubic = F.interpolate(down, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)[:, :3]
        last = model.to_residual["conv"] if args.variant in ("unet", "gated") else model.to_residual[-1]
        weights = last.weight.abs().mean(dim=(1, 2, 3))
    print(f"{args.variant}, {args.steps} steps, lr {args.lr:g}, warm-up {args.warmup}, {args.pixel_loss}, SSIM x {args.ssim_weight:g} ({time.monotonic() - started:.0f} s): SR PSNR "
          f"{psnr(enhanced, pairs.target).mean():.4f} vs bicubic {psnr(bicubic, pairs.target).mean():.4f}, SSIM "
          f"{ssim(enhanced, pairs.target).mean():.5f} vs {ssim(bicubic, pairs.target).mean():.5f}; residual "
          f"weights (R, G, B, matte) {[round(float(w), 5) for w in weights]}")


if __name__ == "__main__":
    main()
