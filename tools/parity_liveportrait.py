"""Parity of our LivePortrait conversion with LivePortrait's own code, on random weights.

    python tools/parity_liveportrait.py --repo PATH/TO/LivePortrait [--work DIR] [--frames 3]

PATH is a checkout of KwaiVGI/LivePortrait; its networks are built from its own
``src/config/models.yaml`` (needs torch and pyyaml; nothing else of theirs is imported, no
detectors, no downloads). The tool then

1. fills their networks with seeded random weights (BatchNorm statistics, LayerNorm/GRN
   parameters and spectral-norm vectors made non-trivial) and saves them in their published
   layout (``base_models/*.pth``, ``retargeting_models/stitching_retargeting_module.pth`` with
   the DDP ``module.`` prefix), checking their own strict ``load_state_dict`` accepts the files;
2. converts that directory with ``convert liveportrait`` (our code, --verify);
3. compares, on unit-scale random inputs, every network (theirs vs ours in PyTorch), and a whole
   animation of a random source by a random driver sequence: their functions (keypoint
   transform, stitching, warping, decoder) and their relative-motion rule against our PyTorch
   networks and against the bundle in ONNX Runtime with the SDK's motion module. The SDK's
   driving keypoints are compared with theirs too.

Pass: every max abs error <= 1e-4 (images in [0, 1]; features relative to their scale).
``--record-keys FILE`` writes their key layout (names and shapes) as the test fixture.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TOLERANCE = 1e-4
NETWORK_CLASSES = {  # their module path, class, models.yaml key
    "appearance_feature_extractor": ("src.modules.appearance_feature_extractor", "AppearanceFeatureExtractor"),
    "motion_extractor": ("src.modules.motion_extractor", "MotionExtractor"),
    "warping_module": ("src.modules.warping_network", "WarpingNetwork"),
    "spade_generator": ("src.modules.spade_generator", "SPADEDecoder"),
}
MLPS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


def fail(message: str) -> None:
    print(f"parity_liveportrait: error: {message}", file=sys.stderr)
    sys.exit(1)


def log(message: str) -> None:
    print(message, flush=True)


# ---- their code ------------------------------------------------------------------------------
def import_theirs(repo: Path):
    if not (repo / "src" / "modules" / "warping_network.py").is_file():
        fail(f"{repo} is not a LivePortrait checkout (no src/modules/warping_network.py)")
    try:
        import yaml
    except ImportError:
        fail("reading their src/config/models.yaml needs pyyaml: pip install pyyaml")
    sys.path.insert(0, str(repo))
    import importlib

    config = yaml.safe_load((repo / "src" / "config" / "models.yaml").read_text())["model_params"]
    classes = {name: getattr(importlib.import_module(mod), cls) for name, (mod, cls) in NETWORK_CLASSES.items()}
    from src.modules.stitching_retargeting_network import StitchingRetargetingNetwork
    from src.utils import camera

    return config, classes, StitchingRetargetingNetwork, camera, wrapper_functions(repo, camera)


def wrapper_functions(repo: Path, camera) -> dict:
    """Their ``LivePortraitWrapper.transform_keypoint``/``stitch``/``stitching`` and
    ``concat_feat``, taken from their source and run as they are (importing the wrapper itself
    would pull in their detectors and config machinery)."""
    namespace = {"torch": torch, "headpose_pred_to_degree": camera.headpose_pred_to_degree,
                 "get_rotation_matrix": camera.get_rotation_matrix}
    helper = ast.parse((repo / "src" / "utils" / "helper.py").read_text())
    wrapper = ast.parse((repo / "src" / "live_portrait_wrapper.py").read_text())
    wanted = [n for n in helper.body if isinstance(n, ast.FunctionDef) and n.name == "concat_feat"]
    cls = next(n for n in wrapper.body if isinstance(n, ast.ClassDef) and n.name == "LivePortraitWrapper")
    wanted += [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in ("transform_keypoint", "stitch", "stitching")]
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "their_wrapper", "exec"), namespace)
    return namespace


def their_wrapper(fn: dict, theirs: dict):
    """A stand-in ``self`` for their wrapper's stitching methods: their stitching MLP and methods."""
    cls = type("LivePortraitWrapperMethods", (), {"stitch": fn["stitch"], "stitching": fn["stitching"]})
    wrapper = cls()
    wrapper.stitching_retargeting_module = {"stitching": theirs["stitching"]}
    return wrapper


def build_theirs(config, classes, mlp_class) -> dict:
    nets = {name: classes[name](**config[f"{name}_params"]).eval() for name in NETWORK_CLASSES}
    mlp_config = config["stitching_retargeting_module_params"]
    nets.update({name: mlp_class(**mlp_config[name]).eval() for name in MLPS})
    return nets


@torch.no_grad()
def randomise(module: torch.nn.Module, g: torch.Generator) -> None:
    """Non-trivial values where default init is trivial (BatchNorm statistics and affine,
    LayerNorm/GRN parameters), and spectral-norm vectors at W's top singular pair (as training
    leaves them), so no network is a near-identity and sigma is well defined."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.normal_(1.0, 0.1, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
        for name in ("gamma", "beta"):
            if hasattr(m, name) and isinstance(getattr(m, name), torch.nn.Parameter):
                getattr(m, name).normal_(0, 0.1, generator=g)
        if type(m).__name__ == "LayerNorm":
            m.weight.normal_(1.0, 0.1, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
        if hasattr(m, "weight_orig"):
            w = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
            u = torch.randn(w.shape[0], generator=g)
            for _ in range(30):
                v = torch.nn.functional.normalize(w.t() @ u, dim=0)
                u = torch.nn.functional.normalize(w @ v, dim=0)
            m.weight_u.copy_(u)
            m.weight_v.copy_(v)


def save_in_their_layout(nets: dict, weights: Path) -> None:
    (weights / "base_models").mkdir(parents=True, exist_ok=True)
    (weights / "retargeting_models").mkdir(parents=True, exist_ok=True)
    for name in NETWORK_CLASSES:
        torch.save(nets[name].state_dict(), weights / "base_models" / f"{name}.pth")
    torch.save({entry: {f"module.{k}": v for k, v in nets[name].state_dict().items()} for name, entry in MLPS.items()},
               weights / "retargeting_models" / "stitching_retargeting_module.pth")


def check_their_loader_accepts(config, classes, mlp_class, weights: Path) -> None:
    """What their load_model does: fresh networks, strict load_state_dict of each file."""
    fresh = build_theirs(config, classes, mlp_class)
    for name in NETWORK_CLASSES:
        fresh[name].load_state_dict(torch.load(weights / "base_models" / f"{name}.pth", weights_only=True))
    s = torch.load(weights / "retargeting_models" / "stitching_retargeting_module.pth", weights_only=True)
    for name, entry in MLPS.items():
        fresh[name].load_state_dict({k[len("module."):]: v for k, v in s[entry].items()})


def record_keys(nets: dict, path: Path, repo: Path) -> None:
    layout = {name: [[k, list(v.shape)] for k, v in nets[name].state_dict().items()] for name in NETWORK_CLASSES}
    layout.update({name: [[f"module.{k}", list(v.shape)] for k, v in nets[name].state_dict().items()] for name in MLPS})
    head = (repo / ".git" / "HEAD")
    doc = {"recorded_by": "tools/parity_liveportrait.py --record-keys", "from": "KwaiVGI/LivePortrait src/modules, "
           "networks built from src/config/models.yaml", "stitching_file_entries": MLPS, "networks": layout}
    if head.exists():
        doc["repo_head"] = head.read_text().strip()
    path.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"recorded {sum(len(v) for v in layout.values())} keys of {len(layout)} state dicts to {path}")


# ---- comparisons -----------------------------------------------------------------------------
class Table:
    def __init__(self):
        self.rows = []

    def add(self, what: str, ours, theirs, image: bool = False) -> None:
        ours, theirs = (np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, np.float64) for x in (ours, theirs))
        if ours.shape != theirs.shape:
            fail(f"{what}: shape {ours.shape} vs theirs {theirs.shape}")
        err = float(np.abs(ours - theirs).max())
        scale = float(np.abs(theirs).max())
        bound = TOLERANCE if image else TOLERANCE * max(scale, 1.0)
        self.rows.append((what, err, scale, bound, err <= bound))
        log(f"  {what:<52} max abs {err:.2e}  (scale {scale:.2e}, bound {bound:.1e})  {'ok' if err <= bound else 'FAIL'}")

    @property
    def ok(self) -> bool:
        return all(r[-1] for r in self.rows)


@torch.no_grad()
def compare_networks(theirs: dict, ours, table: Table, g: torch.Generator) -> None:
    log("module by module, PyTorch (theirs vs ours), unit-scale random inputs:")
    c = ours.config
    image = torch.rand(1, 3, c.image_size, c.image_size, generator=g)
    table.add("F appearance_feature_extractor: feature volume", ours.appearance_feature_extractor(image),
              theirs["appearance_feature_extractor"](image))
    mine, their = ours.motion_extractor(image), theirs["motion_extractor"](image)
    for head in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        table.add(f"M motion_extractor: {head}", mine[head], their[head])
    volume = torch.randn(1, c.reshape_channel, c.reshape_depth, c.feature_size, c.feature_size, generator=g)
    kp_s = torch.rand(1, c.num_kp, 3, generator=g) * 1.6 - 0.8
    kp_d = kp_s + 0.1 * torch.randn(1, c.num_kp, 3, generator=g)
    table.add("W warping_module: warped features", ours.warping_module(volume, kp_s, kp_d),
              theirs["warping_module"](volume, kp_driving=kp_d, kp_source=kp_s)["out"])
    feature = torch.randn(1, c.warp_channels, c.feature_size, c.feature_size, generator=g)
    table.add("G spade_generator: image", ours.spade_generator(feature), theirs["spade_generator"](feature), image=True)
    for name in MLPS:
        x = torch.randn(1, getattr(c, name).input_size, generator=g)
        table.add(f"S {name} MLP", getattr(ours, name)(x), theirs[name](x))


def their_relative_keypoints(fn: dict, camera, x_s_info: dict, frames: list) -> list:
    """Their pipeline's relative driving of an image by a video (live_portrait_pipeline.py,
    'flag_relative_motion', animation_region 'all', pose-friendly), on their kp_info dicts."""
    R_s = camera.get_rotation_matrix(x_s_info["pitch"], x_s_info["yaw"], x_s_info["roll"])
    x_c_s = x_s_info["kp"]
    out = []
    for i, x_d_i_info in enumerate(frames):
        R_d_i = camera.get_rotation_matrix(x_d_i_info["pitch"], x_d_i_info["yaw"], x_d_i_info["roll"])
        if i == 0:
            R_d_0, x_d_0_info = R_d_i, x_d_i_info
        R_new = (R_d_i @ R_d_0.permute(0, 2, 1)) @ R_s
        delta_new = x_s_info["exp"] + (x_d_i_info["exp"] - x_d_0_info["exp"])
        scale_new = x_s_info["scale"] * (x_d_i_info["scale"] / x_d_0_info["scale"])
        t_new = x_s_info["t"] + (x_d_i_info["t"] - x_d_0_info["t"])
        t_new[..., 2].fill_(0)
        out.append(scale_new * (x_c_s @ R_new + delta_new) + t_new)
    return out


def their_kp_info(theirs: dict, camera, image: torch.Tensor) -> dict:
    """Their get_kp_info with flag_refine_info (angles to degrees, keypoints reshaped)."""
    info = theirs["motion_extractor"](image)
    n = info["kp"].shape[0]
    for k in ("pitch", "yaw", "roll"):
        info[k] = camera.headpose_pred_to_degree(info[k])[:, None]
    info["kp"], info["exp"] = info["kp"].reshape(n, -1, 3), info["exp"].reshape(n, -1, 3)
    return info


@torch.no_grad()
def compare_animation(theirs: dict, camera, fn: dict, ours, bundle: Path, frames: int, table: Table,
                      g: torch.Generator) -> None:
    from megaportraits import motion_liveportrait as mlp
    from megaportraits.schema import LIVEPORTRAIT_GRAPH_IO, LIVEPORTRAIT_MOTION
    from megaportraits_export.liveportrait.graphs import role_modules
    from megaportraits_export.onnx_export import ort_session

    c = ours.config
    source = torch.rand(1, 3, c.image_size, c.image_size, generator=g)
    drivers = [torch.rand(1, 3, c.image_size, c.image_size, generator=g) for _ in range(frames)]
    # theirs: the pipeline's calls in order (prepare_source -> get_kp_info -> extract_feature_3d ->
    # transform_keypoint; per frame: relative rule -> stitching -> warp_decode)
    shim = their_wrapper(fn, theirs)
    x_s_info = their_kp_info(theirs, camera, source)
    f_s = theirs["appearance_feature_extractor"](source)
    x_s = fn["transform_keypoint"](None, x_s_info)
    their_kp = their_relative_keypoints(fn, camera, x_s_info, [their_kp_info(theirs, camera, d) for d in drivers])
    their_frames = []
    for x_d in their_kp:
        x_d = shim.stitching(x_s, x_d)
        their_frames.append(theirs["spade_generator"](theirs["warping_module"](f_s, kp_driving=x_d, kp_source=x_s)["out"]))

    log(f"whole frame: a random source driven by {frames} random frames (relative motion, stitching):")
    modules = role_modules(ours)
    sessions = {role: ort_session(bundle / f"{role}.onnx")[0] for role in ("source", "driver", "generator")}

    def onnx_motion(role, image):
        names = list(LIVEPORTRAIT_GRAPH_IO[role].outputs)
        got = dict(zip(names, sessions[role].run(names, {LIVEPORTRAIT_GRAPH_IO[role].inputs[0]: image.numpy()})))
        return got, mlp.decode({k: got[k] for k in LIVEPORTRAIT_MOTION})

    for how in ("PyTorch", "ONNX Runtime bundle"):
        if how == "PyTorch":
            out = modules["source"](source)
            volume, source_motion = out[0], mlp.decode([t.numpy() for t in out[1:]])
            driver_motions = [mlp.decode([t.numpy() for t in modules["driver"](d)]) for d in drivers]
        else:
            got, source_motion = onnx_motion("source", source)
            volume = got["feature_volume"]
            driver_motions = [onnx_motion("driver", d)[1] for d in drivers]
        x_s_ours = mlp.own_keypoints(source_motion)
        table.add(f"{how}: source keypoints x_s (SDK motion module)", x_s_ours, x_s)
        composer = mlp.KeypointComposer(source_motion, "relative")
        for i, (motion, x_d_theirs, frame_theirs) in enumerate(zip(driver_motions, their_kp, their_frames)):
            x_d = composer(motion)
            table.add(f"{how}: frame {i} driving keypoints (relative rule)", x_d, x_d_theirs)
            if how == "PyTorch":
                image = modules["generator"](volume, torch.from_numpy(x_s_ours), torch.from_numpy(x_d))
            else:
                image = sessions["generator"].run(["image"], {"feature_volume": volume, "source_keypoints": x_s_ours,
                                                              "driving_keypoints": x_d})[0]
            table.add(f"{how}: frame {i} image", image, frame_theirs, image=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, type=Path, help="a checkout of KwaiVGI/LivePortrait")
    p.add_argument("--work", type=Path, default=Path("parity_liveportrait_work"),
                   help="where the random weights and the bundle go (default ./parity_liveportrait_work)")
    p.add_argument("--frames", type=int, default=3, help="driver frames of the whole-frame check")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--record-keys", type=Path, metavar="FILE", help="also write their key layout to FILE")
    p.add_argument("--skip-convert", action="store_true", help="reuse the bundle already in --work")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config, classes, mlp_class, camera, fn = import_theirs(args.repo.resolve())
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    theirs = build_theirs(config, classes, mlp_class)
    for net in theirs.values():
        randomise(net, g)
    weights = args.work / "weights"
    save_in_their_layout(theirs, weights)
    check_their_loader_accepts(config, classes, mlp_class, weights)
    log(f"their networks with random weights saved in their layout under {weights}; their strict loader accepts them")
    if args.record_keys:
        record_keys(theirs, args.record_keys, args.repo)

    from megaportraits_export.convert import liveportrait as convert
    from megaportraits_export.liveportrait.weights import load_networks

    bundle = args.work / "bundle"
    if not (args.skip_convert and (bundle / "manifest.json").is_file()):
        convert.convert(weights, bundle, check=True, progress=log)
    ours, reports = load_networks(weights)
    for r in reports:
        log(r.summary())
    table = Table()
    compare_networks(theirs, ours, table, g)
    compare_animation(theirs, camera, fn, ours, bundle, args.frames, table, g)
    worst_image = max(r[1] for r in table.rows if "image" in r[0])
    log(f"{len(table.rows)} comparisons, {sum(not r[-1] for r in table.rows)} failed; worst image error "
        f"{worst_image:.2e}; {time.perf_counter() - started:.0f} s")
    return 0 if table.ok else 1


if __name__ == "__main__":
    sys.exit(main())
