"""The ``enhancer`` graph: G_enh exported and added to a base bundle.

The graph reads the generator's rendering at the base size (``base_image``, and ``base_matte``
for a matte model) and returns it at the high size (``image``, ``matte``), the names of
:data:`megaportraits.schema.ENHANCER_IO`. It is traced like the base graphs (dynamo exporter,
opset 20, dynamic ``batch`` axis, weight standardisation folded, GroupNorms in their stable
two-pass form) and holds standard ops only, so it is its own portable twin.

:func:`add_enhancer` writes a new bundle: a copy of the base bundle with the enhancer graph,
its hash, ``model.enhanced_size`` and the enhancer's provenance in the manifest, staged beside the
output and renamed into place at the end (an interrupted run leaves nothing; the input bundle
is never modified). The provenance records the sha256 of the base bundle's manifest
(``base_bundle_manifest_sha256``): the new bundle's base graphs are that bundle's, byte for
byte, so what was made from the base bundle (a student distilled from it records its
manifest's hash) stays traceable to it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from megaportraits import manifest as mf
from megaportraits.schema import BASE_IMAGE, BASE_MATTE, ENHANCER, ENHANCER_IO, MATTE_OUTPUT
from megaportraits_export.networks.blocks import fold_weight_standardisation
from megaportraits_export.networks.enhancer import Enhancer
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graph_files import check_graph, save_graph
from megaportraits_export.onnx_export.graphs import EXAMPLE_BATCH
from megaportraits_export.onnx_export.group_norm import with_stable_group_norms
from megaportraits_export.onnx_export.tracing import export_graph

ENHANCER_FILE = f"{ENHANCER}.onnx"


def enhancer_names(matte: bool) -> tuple:
    """(input names, output names) of the enhancer graph of a model with or without a matte."""
    if matte:
        return ENHANCER_IO.inputs + (BASE_MATTE,), ENHANCER_IO.outputs + (MATTE_OUTPUT,)
    return ENHANCER_IO.inputs, ENHANCER_IO.outputs


class EnhancerGraph(torch.nn.Module):
    """What the graph computes: an RGBA enhancer's 4 channels as separate image and matte tensors,
    so the enhancer's interface mirrors the generator's."""

    def __init__(self, enhancer: Enhancer):
        super().__init__()
        self.enhancer = enhancer

    def forward(self, base_image: torch.Tensor, base_matte: torch.Tensor | None = None):
        if base_matte is None:
            return self.enhancer(base_image)
        out = self.enhancer(torch.cat([base_image, base_matte], dim=1))
        return out[:, :3], out[:, 3:]


def deployable(enhancer: Enhancer) -> EnhancerGraph:
    """A folded copy of ``enhancer`` (plain convs, stable GroupNorms) in its graph's interface."""
    import copy

    folded = fold_weight_standardisation(copy.deepcopy(enhancer).eval())
    return EnhancerGraph(with_stable_group_norms(folded)).eval()


def example_inputs(enhancer: Enhancer, batch: int = EXAMPLE_BATCH, seed: int = 0) -> tuple:
    """Random base-size inputs for the graph (image, and matte for an RGBA enhancer)."""
    config = enhancer.config
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, config.base_size, config.base_size, generator=g)
    if not config.matte:
        return (image,)
    return image, torch.rand(batch, 1, config.base_size, config.base_size, generator=g)


def save_enhancer_graph(enhancer: Enhancer, path: str | os.PathLike) -> tuple:
    """Trace ``enhancer`` and save its graph at ``path``; returns (input specs, output specs)."""
    path = Path(path)
    names = enhancer_names(enhancer.config.matte)
    program = export_graph(deployable(enhancer), example_inputs(enhancer), *names)
    save_graph(program, path)
    inputs, outputs, uses_custom_op = check_graph(ENHANCER, path, portable=True, names=names)
    if uses_custom_op:  # check_graph refuses that already; the enhancer has no volume sample
        raise ExportError("the enhancer graph holds a custom op")
    return inputs, outputs


def add_enhancer(bundle: str | os.PathLike, enhancer: Enhancer, output: str | os.PathLike,
                 provenance: dict | None = None, precisions: tuple = ("fp32",), calibration_frames=None) -> Path:
    """Write at ``output`` the base ``bundle`` plus ``enhancer`` (see the module docstring).
    ``precisions``: fp32 first, then the enhancer's flavours (int8 calibrated on the base model's
    renderings of ``calibration_frames``, default the synthetic training heads:
    :mod:`.add_precision`)."""
    from megaportraits_export.onnx_export.writing import check_output_dir, staged_bundle

    bundle, output = Path(bundle), Path(output)
    manifest = mf.load_manifest(bundle)
    mf.verify_files(bundle, manifest)
    if output.resolve() == bundle.resolve():
        raise ExportError(f"--output {output} is the input bundle; give a new directory (the input is never "
                          "modified)")
    check_output_dir(output)
    config = enhancer.config
    if config.base_size != manifest.image_size:
        raise ExportError(f"the enhancer reads {config.base_size}x{config.base_size} images but the bundle renders "
                          f"{manifest.image_size}x{manifest.image_size}; train an enhancer for that size")
    if config.matte != manifest.has_matte:
        raise ExportError(f"the enhancer has {config.channels} channels but the bundle's generator "
                          f"{'renders a matte' if manifest.has_matte else 'renders no matte'}; use an enhancer "
                          f"with {4 if manifest.has_matte else 3} channels")
    with staged_bundle(output) as staging:
        for name in manifest.files:
            shutil.copy2(bundle / name, staging / name)
        inputs, outputs = save_enhancer_graph(enhancer, staging / ENHANCER_FILE)
        manifest.graphs[ENHANCER] = mf.GraphSpec(file=ENHANCER_FILE, inputs=tuple(inputs), outputs=tuple(outputs),
                                                 portable_file=ENHANCER_FILE if manifest.custom_op else None)
        manifest.files[ENHANCER_FILE] = ""  # write_manifest hashes it
        manifest.enhanced_size = config.output_size
        manifest.provenance = dict(manifest.provenance, enhancer=dict(
            provenance or {}, config=config.to_dict(),
            base_bundle_manifest_sha256=mf.sha256_file(bundle / mf.MANIFEST_NAME)))
        if tuple(precisions) != ("fp32",):
            from megaportraits_export.onnx_export.add_precision import add_flavours_in_place

            add_flavours_in_place(staging, manifest, tuple(precisions), calibration_frames)
        mf.write_manifest(staging, manifest)
    return output


def main(argv=None) -> int:
    """``python -m megaportraits_export add-enhancer BUNDLE -o OUT (--checkpoint CKPT | --preset NAME
    --random-init [--seed N])``: the base bundle plus an enhancer, written to a new directory."""
    from megaportraits_export import command
    from megaportraits_export.networks.enhancer import PRESETS

    parser = command.parser("add-enhancer", "add a high-resolution enhancer to a bundle (written to a new directory)")
    parser.add_argument("bundle", help="the base model's bundle directory (not modified)")
    parser.add_argument("-o", "--output", required=True, help="the new bundle's directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="an enhancer training run's model_*.pt")
    which.add_argument("--preset", choices=list(PRESETS), help="with --random-init: an enhancer preset")
    parser.add_argument("--random-init", action="store_true", help="random weights (benchmarks, tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    parser.add_argument("--precision", default="fp32", metavar="fp32[,int8][,fp16]",
                        help="the precisions the enhancer graph is carried in, fp32 first (e.g. fp32,int8: int8 "
                             "calibrated on the base model's renderings of synthetic training heads)")
    args = parser.parse_args(argv)
    if args.preset and not args.random_init:
        parser.error("--preset needs --random-init (trained weights come from --checkpoint)")
    return command.run(_add_enhancer, args)


def _add_enhancer(args) -> int:
    from megaportraits_export.networks.enhancer import build_enhancer, get_enhancer_config
    from megaportraits_export.onnx_export.add_precision import check_fp32_first
    from megaportraits_export.onnx_export.precision import parse_precisions

    precisions = parse_precisions(args.precision)
    check_fp32_first(precisions)

    if args.checkpoint:
        from megaportraits_export.training.enhancement import load_enhancer_checkpoint

        enhancer, _, provenance = load_enhancer_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        config = get_enhancer_config(args.preset)
        manifest = mf.load_manifest(args.bundle)
        if manifest.has_matte and not config.matte:  # a matte model's bundle takes the RGBA twin
            config = config.replace(channels=4)
        enhancer, provenance = build_enhancer(config), {"weights": "random-init", "seed": args.seed}
    out = add_enhancer(args.bundle, enhancer.eval(), args.output, provenance=provenance, precisions=precisions)
    config = enhancer.config
    print(f"wrote {out}: {config.base_size} -> {config.output_size} px enhancer ({config.name})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
