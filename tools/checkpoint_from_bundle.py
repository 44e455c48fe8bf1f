#!/usr/bin/env python3
"""Recover a training checkpoint from an exported bundle: the bundle's weights back in PyTorch.

    python tools/checkpoint_from_bundle.py sdk/megaportraits/assets/demo_bundle runs/demo128_from_bundle/model_last.pt

Why: the shipped demo model's training checkpoints were not kept (runs/ is outside git), but
its weights are all in the bundle's ONNX graphs, and fine-tuning it (docs/demo_model.md,
"Expression") starts from hours of training instead of nothing.

How: the exporter names some initializers after their parameters and others anonymously
(GroupNorm scales and shifts become ``view_N`` constants), so names alone do not say which
constant is which weight. The graph *structure* does: a probe model of the same preset whose
every parameter holds distinct random values is exported with this repository's exporter, each
of its initializers is identified by value with a parameter of the (folded) probe, and the
bundle's initializer at the same place in the same graph holds that parameter's trained value.
Weight standardisation was folded into the exported convolutions; a standardised weight
standardises to itself (up to the 1e-6 epsilon), so it loads back into the WS convolution as is.
The result is checked: the bundle's portable source and generator graphs in ONNX Runtime and the
recovered model in PyTorch must agree on a test image, else nothing is written.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from megaportraits.schema import BASE_ROLES, GENERATOR, MATTE_OUTPUT, SOURCE

GRAPHS = BASE_ROLES
TOLERANCE = 1e-3


def _probe_checkpoint(config, path: Path) -> None:
    """A checkpoint of ``config`` whose parameters all hold distinct random values."""
    import torch

    from megaportraits_export.checkpoint import save_checkpoint
    from megaportraits_export.model import build_model

    torch.manual_seed(20261201)
    model = build_model(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    save_checkpoint(path, model, config, config.name, {"note": "probe for tools/checkpoint_from_bundle.py"})


def _first_uses(graph) -> dict:
    """initializer name -> (node index, input slot) of its first use."""
    names = {i.name for i in graph.initializer}
    uses = {}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name in names and name not in uses:
                uses[name] = (index, slot)
    return uses


def _parameter_places(probe_bundle: Path, probe_model) -> dict:
    """(graph, node index, input slot) -> parameter names, from the probe's values."""
    import onnx
    from onnx import numpy_helper

    from megaportraits_export.model import folded_for_export

    folded = {name: p.detach().numpy().ravel() for name, p in folded_for_export(probe_model).named_parameters()}
    places = {}
    for graph_name in GRAPHS:
        graph = onnx.load(probe_bundle / f"{graph_name}.onnx").graph
        uses = _first_uses(graph)
        for init in graph.initializer:
            value = numpy_helper.to_array(init).ravel()
            if value.size < 2 or init.name not in uses:
                continue
            matches = [n for n, v in folded.items() if v.size == value.size and np.allclose(v, value, atol=1e-6)]
            if len(matches) == 1:
                places.setdefault((graph_name, *uses[init.name]), []).append(matches[0])
    covered = {n for names in places.values() for n in names}
    missing = sorted(set(folded) - covered)
    if missing:
        raise SystemExit(f"error: the probe export does not show where {len(missing)} parameter(s) go "
                         f"(first: {missing[0]}); the exporter changed in a way this tool does not follow")
    return places


def recover(bundle: Path, output: Path) -> dict:
    import onnx
    import torch
    from onnx import numpy_helper

    from megaportraits_export.checkpoint import load_model_from_checkpoint, save_checkpoint
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    manifest = json.loads((bundle / "manifest.json").read_text())
    has_matte = any(o.get("name") == MATTE_OUTPUT for o in manifest["graphs"][GENERATOR].get("outputs", []))
    config = get_config(manifest["model"]["preset"]).replace(matte=has_matte)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _probe_checkpoint(config, scratch / "probe.pt")
        subprocess.run([sys.executable, "-m", "megaportraits_export", "export", "--checkpoint", str(scratch / "probe.pt"),
                        "--output", str(scratch / "probe_bundle")], check=True, stdout=subprocess.DEVNULL)
        probe, _, _ = load_model_from_checkpoint(scratch / "probe.pt")
        places = _parameter_places(scratch / "probe_bundle", probe)
    model = build_model(config).eval()
    parameters = dict(model.named_parameters())
    graphs = {name: onnx.load(bundle / f"{name}.onnx").graph for name in GRAPHS}
    values = {name: {i.name: i for i in g.initializer} for name, g in graphs.items()}
    loaded = set()
    with torch.no_grad():
        for (graph_name, index, slot), names in places.items():
            source_name = graphs[graph_name].node[index].input[slot]
            value = torch.from_numpy(numpy_helper.to_array(values[graph_name][source_name]).copy())
            for name in names:
                if name not in loaded:
                    parameters[name].copy_(value.reshape(parameters[name].shape))
                    loaded.add(name)
    difference = _check_against_bundle(model, bundle, manifest)
    if difference > TOLERANCE:
        raise SystemExit(f"error: the recovered model differs from the bundle by {difference:.2e} (> {TOLERANCE}); "
                         "the bundle was not exported by this version of the exporter")
    provenance = dict(manifest.get("provenance") or {})
    provenance["recovered_from_bundle"] = {"bundle": str(bundle), "files": manifest.get("files"),
                                           "max_abs_difference": difference}
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, model, config, config.name, provenance)
    return {"parameters": len(loaded), "max_abs_difference": difference}


def _check_against_bundle(model, bundle: Path, manifest: dict) -> float:
    """Largest difference between PyTorch and the bundle's portable graphs on a test image."""
    import onnxruntime as ort
    import torch

    size = model.config.image_size
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    def session(role):  # the portable graphs: ONNX Runtime runs them without the custom-op library
        entry = manifest["graphs"][role]
        return ort.InferenceSession(str(bundle / entry.get("portable_file", entry["file"])),
                                    providers=["CPUExecutionProvider"])

    source, generator = session(SOURCE), session(GENERATOR)
    avatar = source.run(None, {source.get_inputs()[0].name: image})
    rendered = generator.run(None, dict(zip([i.name for i in generator.get_inputs()], avatar)))
    with torch.no_grad():
        ours = model.source_branch(torch.from_numpy(image))
        ours_rendered = model.generator(*[torch.from_numpy(a) for a in avatar]).numpy()
    differences = [float(np.abs(a.numpy() - b).max()) for a, b in zip(ours, avatar)]
    differences.append(float(np.abs(ours_rendered - np.concatenate(rendered, axis=1)).max()))
    return max(differences)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("output", type=Path, help="the checkpoint to write (model_*.pt format)")
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"error: {args.bundle} is not a bundle (no manifest.json)", file=sys.stderr)
        return 1
    if args.output.exists():
        print(f"error: {args.output} exists; remove it or give another path", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    report = recover(args.bundle, args.output)
    print(f"wrote {args.output}: {report['parameters']} parameters, the bundle's graphs reproduced to "
          f"{report['max_abs_difference']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
