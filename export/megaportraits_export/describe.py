"""``python -m megaportraits_export describe --preset NAME [--json]``.

Per-network parameter counts and the shape of every tensor in the data flow, taken from the real
modules: the model is built on the meta device (no weights are allocated, so paper512 costs
nothing) and run once on meta tensors, with forward hooks on the networks and a recording volume
sampler reporting what flows between them. Multiply-accumulates of the convolutions and linear
layers are counted from the same run.

``describe --enhancer NAME`` does the same for a high-resolution enhancer (G_enh) preset, and adds
the peak memory of one inference forward, also measured on meta tensors: every tensor an op
creates (views excepted) counts from its creation until Python frees it.
"""
from __future__ import annotations

import json
import math
import sys
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import command, warp
from .config import PRESETS, ModelConfig, get_config
from .model import MegaPortraits, build_model
from .networks.blocks import count_parameters
from .networks.enhancer import PRESETS as ENHANCER_PRESETS
from .networks.enhancer import build_enhancer, get_enhancer_config

# (module path, symbol, what it is); the path is relative to the model, with the shared driver
# branch written as driver_branch
NETWORKS = (
    ("source_branch.appearance_encoder", "E_app", "appearance encoder"),
    ("source_branch.appearance_encoder.blocks_3d", "E_app 3D", "its 3D residual blocks"),
    ("source_branch.global_descriptor", "E_id", "global descriptor network (ResNet-50-style trunk)"),
    ("driver_branch.head_pose", "pose", "head-pose regressor (ResNet-18-style trunk)"),
    ("driver_branch.expression_encoder", "E_exp", "expression encoder (ResNet-18-style trunk)"),
    ("source_branch.source_warp", "W_s->", "source warping generator, with its embedding"),
    ("source_branch.source_warp.embedding", "W emb", "its (z, e_s) embedding (outside the official 9.0M)"),
    ("source_branch.canonical_generator", "G3D", "canonical 3D U-Net"),
    ("generator.driver_warp", "W_->d", "driver warping generator, with its embedding"),
    ("generator.image_generator", "P+G2D", "projection and image generator"),
    ("generator.image_generator.projection", "P", "its projection"),
)

# what the paper (arXiv 2207.07621) and its official code report for the paper-size networks
REFERENCE_MILLIONS = {
    "source_branch.appearance_encoder": 11.6,
    "source_branch.appearance_encoder.blocks_3d": 1.5,
    "source_branch.source_warp": 9.0,
    "source_branch.canonical_generator": 57.8,
    "generator.driver_warp": 9.0,
    "generator.image_generator": 35.8,
}

# (module path, call, symbol, what): outputs of the networks, in the order a forward pass makes
# them; the driver branch runs twice, on the source (call 0) and on the driver (call 1)
FLOW = (
    ("source_branch.appearance_encoder", 0, "v_s", "volumetric appearance features"),
    ("source_branch.global_descriptor", 0, "e_s", "global descriptor"),
    ("driver_branch.head_pose", 0, "theta_s", "source pose (camera -> canonical)"),
    ("driver_branch.expression_encoder.trunk", 0, "crop_s", "pose-aligned source crop (trunk input)"),
    ("driver_branch.expression_encoder", 0, "z_s", "source expression"),
    ("source_branch.source_warp.embedding", 0, "emb_s", "(z_s, e_s) embedding driving adaptive GroupNorm"),
    ("source_branch.source_warp", 0, "D_s", "source deformation field"),
    ("sampler", 0, "g_s", "source -> canonical sampling grid"),
    ("sampler", 0, "v_s->c", "source volume in canonical space (one volume sample)"),
    ("source_branch.canonical_generator", 0, "c_s", "canonical volume"),
    ("driver_branch.head_pose", 1, "theta_d", "driver pose"),
    ("driver_branch.expression_encoder.trunk", 1, "crop_d", "pose-aligned driver crop (trunk input)"),
    ("driver_branch.expression_encoder", 1, "z_d", "driver expression"),
    ("generator.driver_warp.embedding", 0, "emb_d", "(z_d, e_s) embedding driving adaptive GroupNorm"),
    ("generator.driver_warp", 0, "D_d", "driver deformation field"),
    ("sampler", 1, "g_d", "canonical -> driver sampling grid"),
    ("sampler", 1, "v_d", "driver volume (one volume sample)"),
    ("generator.image_generator.projection", 0, "P(v_d)", "depth folded into channels, 1x1 conv"),
    ("generator.image_generator", 0, "image", "output image (RGB, or RGBA: A the matte)"),
)
TRUNK_INPUTS = {"driver_branch.expression_encoder.trunk"}


def _module(model: MegaPortraits, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module


def describe(preset_or_config: str | ModelConfig, batch: int = 1) -> dict:
    """Parameter counts, multiply-accumulates and data-flow shapes of a preset (see module doc)."""
    config = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    with torch.device("meta"):
        model = build_model(config).eval()
    seen: dict = {}
    handles = []
    for path in {path for path, *_ in FLOW if path != "sampler"}:
        handles.append(_module(model, path).register_forward_hook(_recorder(seen, path, path in TRUNK_INPUTS)))
    macs = {path: 0 for path, *_ in NETWORKS}
    for path in macs:
        for layer in _module(model, path).modules():
            if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                handles.append(layer.register_forward_hook(_mac_counter(macs, path)))

    def recording_sampler(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = warp.torch_volume_sampler(volume, grid)
        seen.setdefault("sampler", []).append((grid.shape, out.shape))
        return out

    try:
        with torch.device("meta"), warp.use_volume_sampler(recording_sampler), torch.no_grad():
            image = torch.empty(batch, 3, config.image_size, config.image_size)
            model(image, image)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "preset": config.name,
        "batch": batch,
        "parameters": _parameter_table(model, macs, batch),
        "graphs": _graph_totals(model),
        "data_flow": _data_flow(seen, batch, config),
        "config": config.to_dict(),
    }


def _recorder(seen: dict, path: str, record_input: bool):
    def hook(module, inputs, output):
        tensor = inputs[0] if record_input else output
        seen.setdefault(path, []).append(tensor.shape)
    return hook


def _mac_counter(macs: dict, path: str):
    def hook(layer, inputs, output):
        if isinstance(layer, nn.Linear):
            macs[path] += output.numel() * layer.in_features
        else:
            macs[path] += output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return hook


def _parameter_table(model: MegaPortraits, macs: dict, batch: int) -> list:
    rows = []
    for path, symbol, what in NETWORKS:
        row = {"module": path, "symbol": symbol, "what": what,
               "parameters": count_parameters(_module(model, path)),
               "macs_per_sample": macs[path] // batch}
        if model.config.name == "paper512" and path in REFERENCE_MILLIONS:
            row["reference_millions"] = REFERENCE_MILLIONS[path]
        rows.append(row)
    return rows


def _graph_totals(model: MegaPortraits) -> dict:
    """Parameters per exported graph: the driver branch is inside both the source and the driver graph."""
    source = count_parameters(model.source_branch)
    driver = count_parameters(model.driver_branch)
    generator = count_parameters(model.generator)
    return {
        "model": count_parameters(model),
        "source": source,
        "driver": driver,
        "generator": generator,
        "bundle_fp32_bytes": 4 * (source + driver + generator),
    }


def _data_flow(seen: dict, batch: int, config: ModelConfig) -> list:
    flow = [{"tensor": "source_image", "shape": [batch, 3, config.image_size, config.image_size],
             "module": "input", "what": "source image"},
            {"tensor": "driver_image", "shape": [batch, 3, config.image_size, config.image_size],
             "module": "input", "what": "driver image"}]
    for path, call, symbol, what in FLOW:
        if path == "sampler":
            grid_shape, out_shape = seen["sampler"][call]
            shape = grid_shape if symbol.startswith("g_") else out_shape
            module = "warp.sample_volume"
        else:
            shape, module = seen[path][call], path
        flow.append({"tensor": symbol, "shape": list(shape), "module": module, "what": what})
    return flow


# G_enh's parts, in data-flow order: (module path, what it is)
ENHANCER_PARTS = (
    ("encoder", "conv + 2 residual blocks (the first halves the side)"),
    ("decoder", "residual blocks at half the base side"),
    ("up_stages", "2 upsampling stages (nearest 2x + a residual block)"),
    ("join_stem", "conv joining the stem's features to the first stage (skips)"),
    ("join_upsampled", "conv joining the bicubic image at the high side (skips)"),
    ("high", "residual blocks at the high side"),
    ("to_residual", "GN, ReLU, conv to the residual over bicubic upsampling"),
    ("linear_path", "the linear super-resolution filter, per output phase (linear_taps)"),
)


def _shape_recorder(shapes: dict, path: str):
    def hook(module, inputs, output):
        shapes[path] = list(output.shape)
    return hook


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensors alive at once: each op's new outputs (not views) count until freed."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self.add(tensor)
        return out

    def add(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size


def describe_enhancer(preset: str, batch: int = 1) -> dict:
    """Parameters, multiply-accumulates per sample, peak inference memory and tensor shapes of
    an enhancer preset, from one forward of the real module on meta tensors."""
    config = get_enhancer_config(preset)
    with torch.device("meta"):
        model = build_enhancer(config).eval()
    parts = [(path, what) for path, what in ENHANCER_PARTS if hasattr(model, path)]  # some are optional
    macs = {path: 0 for path, _ in parts}
    shapes = {}
    handles = []
    for path in macs:
        part = getattr(model, path)
        # a ModuleList is never called, nor is the encoder as a whole with the skips (its stem is read)
        last = part[-1] if isinstance(part, (nn.ModuleList, nn.Sequential)) else part
        handles.append(last.register_forward_hook(_shape_recorder(shapes, path)))
        for layer in part.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                handles.append(layer.register_forward_hook(_mac_counter(macs, path)))
    memory = _LiveTensorBytes()
    try:
        with torch.device("meta"), torch.no_grad():
            image = torch.empty(batch, config.channels, config.base_size, config.base_size)
            with memory:
                memory.add(image)
                output = model(image)
            del output
    finally:
        for handle in handles:
            handle.remove()
    parameters = count_parameters(model)
    return {
        "enhancer": config.name,
        "batch": batch,
        "input_shape": [batch, config.channels, config.base_size, config.base_size],
        "output_shape": [batch, config.channels, config.output_size, config.output_size],
        "parts": [{"module": path, "what": what, "parameters": count_parameters(getattr(model, path)),
                   "macs_per_sample": macs[path] // batch, "output_shape": shapes[path]}
                  for path, what in parts],
        "parameters": parameters,
        "macs_per_sample": sum(macs.values()) // batch,
        "fp32_weight_bytes": 4 * parameters,
        "peak_activation_bytes": memory.peak,
        "peak_memory_bytes": memory.peak + 4 * parameters,
        "config": config.to_dict(),
    }


def format_enhancer_text(report: dict) -> str:
    shape = "x".join(str(n) for n in report["input_shape"]), "x".join(str(n) for n in report["output_shape"])
    lines = [f"enhancer {report['enhancer']}: {shape[0]} -> {shape[1]} (batch {report['batch']})", "",
             f"{'part':<14}{'params':>12}{'GMAC/sample':>13}  {'output':<18}what"]
    for row in report["parts"]:
        out = "x".join(str(n) for n in row["output_shape"])
        lines.append(f"{row['module']:<14}{row['parameters']:>12,}{row['macs_per_sample'] / 1e9:>13.3f}  "
                     f"{out:<18}{row['what']}")
    lines += ["", f"total {report['parameters']:,} parameters ({report['fp32_weight_bytes'] / 1e6:.1f} MB fp32), "
                  f"{report['macs_per_sample'] / 1e9:.2f} GMAC per frame; peak inference memory "
                  f"{report['peak_memory_bytes'] / 2**20:.0f} MiB (activations "
                  f"{report['peak_activation_bytes'] / 2**20:.0f} MiB + weights)"]
    return "\n".join(lines)


def format_text(report: dict) -> str:
    lines = [f"preset {report['preset']} (batch {report['batch']})", "",
             f"{'network':<54}{'params':>12}{'reference':>12}{'GMAC/sample':>13}"]
    for row in report["parameters"]:
        reference = f"~{row['reference_millions']}M" if "reference_millions" in row else ""
        name = f"{row['symbol']:<9} {row['module']}"
        lines.append(f"{name:<54}{row['parameters']:>12,}{reference:>12}{row['macs_per_sample'] / 1e9:>13.3f}")
    graphs = report["graphs"]
    lines += ["", f"model total {graphs['model']:,} parameters; graphs: source {graphs['source']:,}, "
                  f"driver {graphs['driver']:,}, generator {graphs['generator']:,}; "
                  f"fp32 bundle {graphs['bundle_fp32_bytes'] / 1e6:.1f} MB", "",
              f"{'tensor':<14}{'shape':<20}{'from':<42}what"]
    for entry in report["data_flow"]:
        shape = "x".join(str(n) for n in entry["shape"])
        lines.append(f"{entry['tensor']:<14}{shape:<20}{entry['module']:<42}{entry['what']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = command.parser("describe", "parameter counts and data-flow tensor shapes of a preset")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=list(PRESETS), help="model preset")
    which.add_argument("--enhancer", choices=list(ENHANCER_PRESETS),
                       help="a high-resolution enhancer (G_enh) preset instead of a base model")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the shapes (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--student", action="store_true",
                        help="describe the real-time student of that size instead (networks/student.py)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    return command.run(_describe, args)


def _describe(args) -> int:
    if args.enhancer:
        report = describe_enhancer(args.enhancer, batch=args.batch)
        print(json.dumps(report, indent=2) if args.json else format_enhancer_text(report))
        return 0
    if args.student:
        from .networks.student import describe_student, format_student
        from .student_config import STUDENT_PRESETS

        if args.preset not in STUDENT_PRESETS:
            raise command.CommandError(f"there is no student preset {args.preset!r}; students exist for "
                                       f"{', '.join(STUDENT_PRESETS)}")
        report = describe_student(STUDENT_PRESETS[args.preset])
        print(json.dumps(report, indent=2) if args.json else format_student(report))
        return 0
    report = describe(args.preset, batch=args.batch)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
