"""``python -m megaportraits_export convert emoportraits``: their checkpoint -> a bundle.

    python -m megaportraits_export convert emoportraits --checkpoint 000_model.pth \\
        --head-pose head_pose_regressor.pth -o emoportraits_bundle [--verify] [--portable]

Reads their stage-1 state dict (dropping the discriminator and loss networks), folds spectral
norm, weight standardisation and the head-pose BatchNorms into plain convs, maps every key (a
key it does not know stops it, named), exports the three graphs through the project's exporter
and writes provenance into the manifest: the files' sha256, their repository and licence
(CC BY-NC-SA 4.0: the bundle is as non-commercial as their weights).

What the bundle expects (their inference, notebooks/infer.py): a 512x512 face crop; the SOURCE
masked by face parsing (background set to 0) before the source graph, the driver unmasked. The
face-parsing network they use is not converted here: without it the source keeps its background,
which the encoders then see (they never did in training). Their generator renders the person on
a pure green backdrop; by default the bundle's generator keys that green into a matte
(:func:`.networks.green_key`), so the SDK composites the person onto the source's own backdrop
and pastes the crop back; ``--keep-green`` exports their raw rendering instead.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from ... import command
from ...config import RESNET18, RESNET50, ModelConfig, get_config
from . import LICENCE, SOURCE_REPOSITORY
from .keymap import Conversion, ConversionError, load_into, map_head_pose_state, map_model_state
from .model import EmoPortraits

PRESET = "emoportraits"
# their options this converter's networks do not implement (the released model uses none of them)
UNSUPPORTED = {"use_back": False, "volume_rendering": False, "gen_use_adanorm": False, "dec_use_adanorm": False,
               "gen_use_adaconv": False, "dec_use_adaconv": False, "unet_first": False, "use_tensor": False,
               "cat_em": False, "pred_volume_num_blocks": 0, "dec_bigger": False, "norm_layer_type": "gn",
               "gen_activation_type": "relu", "dec_pred_seg": False, "tex_pred_rgb": False,
               "im_dec_num_lrs_per_resolution": 2, "dec_use_sg3_img_dec": False, "enc_block_type": "res",
               "warp_block_type": "res", "dec_up_block_type": "res"}


def config_from_arguments(args: dict, name: str = PRESET) -> ModelConfig:
    """Their model arguments (train.py defaults + the launch command line) -> our ModelConfig.

    The widths follow their configs' rules (va_arguments.py and each network's constructor).
    Raises ConversionError for an option whose layout is not implemented here.
    """
    for key, expected in UNSUPPORTED.items():
        if key in args and args[key] != expected:
            raise ConversionError(f"their argument {key}={args[key]!r} is not supported (only {expected!r}, as in "
                                  "the released model)")
    needed = ("image_size", "latent_volume_size", "latent_volume_depth", "latent_volume_channels",
              "gen_latent_texture_size", "gen_latent_texture_channels", "warp_output_size", "gen_num_channels",
              "gen_max_channels", "enc_channel_mult", "source_volume_num_blocks", "idt_backbone", "idt_image_size",
              "idt_output_channels", "idt_output_size", "lpe_face_backbone", "exp_image_size",
              "lpe_output_channels_expression", "gen_embed_size", "warp_channel_mult", "gen_dummy_input_size",
              "gen_max_channels_unet3d", "dec_channel_mult", "dec_max_channels", "dec_num_blocks",
              "im_dec_ch_div_factor")
    missing = [key for key in needed if key not in args]
    if missing:
        raise ConversionError(f"their arguments lack {', '.join(missing)}")
    if args["warp_output_size"] != args["gen_latent_texture_size"] or \
            args["latent_volume_size"] != args["gen_latent_texture_size"]:
        raise ConversionError("warp_output_size, latent_volume_size and gen_latent_texture_size must be equal")
    base, top = args["gen_num_channels"], args["gen_max_channels"]
    stem = int(base * args["enc_channel_mult"])
    appearance, width = [], stem
    for _ in range(int(math.log2(args["image_size"] // args["latent_volume_size"]))):
        width = min(width * 2, top)
        appearance.append(width)
    warp_steps = int(math.log2(args["warp_output_size"] // args["gen_embed_size"]))
    warp = [min(int(base * args["warp_channel_mult"] * 2 ** i), top) // 32 * 32 for i in range(warp_steps, -1, -1)]
    canonical, width = [], args["gen_latent_texture_channels"]
    for _ in range(int(math.log2(args["gen_latent_texture_size"] // args["gen_dummy_input_size"]))):
        width = min(width * 2, args["gen_max_channels_unet3d"])
        canonical.append(width)
    up_steps = int(math.log2(args["image_size"] // args["gen_latent_texture_size"]))
    image_channels = min(int(base * args["dec_channel_mult"] * 2 ** up_steps), args["dec_max_channels"])
    up, width = [], image_channels
    for _ in range(up_steps):
        width = max(int(width / args["im_dec_ch_div_factor"] / 32) * 32, base)
        up.append(width)
    backbones = {"resnet18": RESNET18, "resnet50": RESNET50}
    for key in ("idt_backbone", "lpe_face_backbone"):
        if args[key] not in backbones:
            raise ConversionError(f"their argument {key}={args[key]!r} is not supported (resnet18 or resnet50)")
    return ModelConfig(
        name=name, image_size=args["image_size"],
        volume_channels=args["latent_volume_channels"], volume_depth=args["latent_volume_depth"],
        volume_size=args["latent_volume_size"],
        appearance_stem_channels=stem, appearance_channels=tuple(appearance),
        appearance_3d_blocks=args["source_volume_num_blocks"],
        descriptor_backbone=backbones[args["idt_backbone"]], descriptor_input_size=args["idt_image_size"],
        descriptor_channels=args["idt_output_channels"], descriptor_size=args["idt_output_size"],
        pose_backbone=RESNET18, pose_input_size=128,
        expression_backbone=backbones[args["lpe_face_backbone"]], expression_input_size=args["exp_image_size"] // 2,
        expression_dim=args["lpe_output_channels_expression"], expression_crop_zoom=2.0,
        warp_channels=tuple(warp), canonical_channels=tuple(canonical),
        image_channels=image_channels, image_blocks=args["dec_num_blocks"], image_up_channels=tuple(up),
        architecture="emoportraits")


def read_arguments(path: Path) -> dict:
    """Their ``logs/<experiment>/args.txt``: one ``name: value`` line per argument of train.py."""
    if not path.is_file():
        raise ConversionError(f"arguments file {path} does not exist")
    arguments = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(": ")
        if not sep or not name.strip() or " " in name.strip():
            raise ConversionError(f"{path}:{number} is not a 'name: value' line; give the args.txt saved beside "
                                  "the checkpoint (logs/<experiment>/args.txt)")
        arguments[name.strip()] = _argument_value(value.strip())
    return arguments


def _argument_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _load_state(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConversionError(f"{what} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConversionError(f"{what} {path} is not a PyTorch state dict ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{what} {path} is not a state dict of tensors")
    return state


def convert_checkpoint(checkpoint: Path, head_pose: Path, config: ModelConfig | None = None) -> tuple:
    """(our EmoPortraits model in eval mode with their weights, the Conversion record)."""
    config = config or get_config(PRESET)
    conversion = map_model_state(_load_state(Path(checkpoint), "checkpoint"))
    map_head_pose_state(_load_state(Path(head_pose), "head-pose file"), conversion)
    model = EmoPortraits(config)
    load_into(model, conversion)
    return model.eval(), conversion


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(checkpoint: Path, head_pose: Path, conversion: Conversion, matte: bool = True) -> dict:
    return {
        "weights": "converted from the official EMOPortraits stage-1 checkpoint",
        "source": SOURCE_REPOSITORY,
        "licence": LICENCE,
        "licence_note": "their code and weights are CC BY-NC-SA 4.0; so is this converted bundle",
        "source_files": {checkpoint.name: sha256(checkpoint), head_pose.name: sha256(head_pose)},
        "conversion": {"keys_used": conversion.used, "dropped": dict(conversion.dropped),
                       "recomputed_buffers": conversion.recomputed, "folds": dict(conversion.folded)},
        "input": "512x512 face crop; source masked by face parsing (not converted: the source keeps its "
                 "background here), driver unmasked",
        "output": ("RGB + matte keyed from their pure green backdrop (green_key)" if matte else
                   "RGB on their pure green backdrop, no matte"),
        "crop": "their inference crops a square of side (w + h) of a MediaPipe face box whose top is at 0.9 y "
                "and bottom at y + 1.2 h, about 2.2 face heights, resized to 512 (bicubic)",
    }


def build_parser():
    p = command.parser("convert emoportraits", "Convert an official EMOPortraits stage-1 checkpoint into a bundle.")
    p.add_argument("--checkpoint", required=True, type=Path, help="their NNN_model.pth (stage-1 state dict)")
    p.add_argument("--head-pose", required=True, type=Path, help="their repos/head_pose_regressor.pth")
    p.add_argument("--args", type=Path, help="their logs/<experiment>/args.txt: take the architecture from it "
                                             "(default: the released model's, preset emoportraits)")
    p.add_argument("-o", "--output", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--verify", action="store_true", help="compare every graph with PyTorch in ONNX Runtime")
    p.add_argument("--portable", action="store_true", help="standard ONNX ops only (no custom-op library)")
    p.add_argument("--keep-green", action="store_true",
                   help="export their raw rendering on green, without the keyed matte")
    return p


def _convert(a) -> int:
    try:
        return _convert_checkpoint(a)
    except ConversionError as error:   # their files are not what this converter understands
        raise command.CommandError(str(error)) from None


def _convert_checkpoint(a) -> int:
    from ...onnx_export import export_bundle   # heavy (onnx, exporter): after argument checks
    steps = 3
    start = time.time()

    def step(index: int, text: str) -> None:
        print(f"[{index}/{steps}] {text} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

    if a.output.resolve() in (a.checkpoint.resolve(), a.head_pose.resolve()):
        raise command.CommandError("the output directory must not be one of the input files")
    step(1, "reading and mapping their weights")
    base = config_from_arguments(read_arguments(a.args)) if a.args else get_config(PRESET)
    if base != get_config(PRESET):   # other widths than the released model: say so in the manifest
        base = base.replace(name=f"{PRESET}_custom")
    config = base.replace(matte=not a.keep_green)
    model, conversion = convert_checkpoint(a.checkpoint, a.head_pose, config)
    step(2, f"mapped {conversion.used} tensors (folds {conversion.folded}); exporting the graphs")
    export_bundle(model, model.config, a.output, preset=config.name,
                  provenance=provenance(a.checkpoint, a.head_pose, conversion, matte=not a.keep_green),
                  portable=a.portable, verify=a.verify)
    step(3, f"wrote {a.output}" + (" (verified in ONNX Runtime)" if a.verify else ""))
    return 0


def main(argv=None) -> int:
    """The shared conventions of every export subcommand (one error line, exit 1; Ctrl-C 130)."""
    return command.run(_convert, build_parser().parse_args(sys.argv[1:] if argv is None else argv))
