"""Parity of the EMOPortraits converter against their own code (a checkout given by path).

    python tools/parity_emoportraits.py --repo /path/to/EMOPortraits [--size small|full]
        [--bundle-dir DIR] [--write-fixture tests/export/fixtures/emoportraits_keys.json]

Builds their networks with random weights from their code (each from its Config dataclass, as
their ``va.py`` does, without importing ``va.py``, which loads detectors and weights), applies
their spectral-norm and weight-standardisation helpers so the state dict has their real key
layout, saves it as a checkpoint plus a head-pose file, converts both with our converter, then
compares module by module (v_s, e_s, pose, z, both warp grids, canonical volume, image) and end
to end (their forward vs our PyTorch model vs the exported ONNX bundle in ONNX Runtime, and the
SDK's Animator on that bundle). A module passes within 1e-4 max abs, relative to its output's
scale where that exceeds 1 (as the exporter's own verification does): random weights give
volumes up to ~90, and ``warped_unit`` repeats the warp on a unit-scale volume.

Needs, besides this project's export environment: torchvision (no pretrained weights are
fetched; its C extension is not needed), einops and scipy, which their modules import.
``--size small`` uses narrower widths of their own argument set (a quick check);
``--size full`` the released model's arguments (experiments/args.txt).

Measured on the shared 2-core development machine (seed 0, smooth inputs, 1 thread):
- small: every module <= 3.5e-5 max abs on their inputs; image vs their forward 0.024/255
  (PyTorch), 0.050/255 (ORT bundle), 0.25/255 (SDK Animator, 8-bit frame) mean abs;
- full (160.7M parameters of theirs): every module <= 6.1e-5 max abs, except the two-step warp
  of v_s, 2.6e-4 on values up to 66 (4e-6 relative; linear in the volume); image vs their
  forward 0.065/255 (PyTorch, max 9.4e-3), 0.12/255 (ORT bundle with the custom op, max
  1.7e-2), 0.27/255 (SDK Animator) mean abs. Per-pixel noise inputs (--inputs noise) move z by
  up to 1.9e-4: the aligned crop of noise magnifies the ~1e-7 difference between our closed-form
  inverse pose and their torch.inverse; on their crop our z differs by 2.7e-6.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "export"))

# what --size small changes in their arguments (widths and sizes their configs derive from)
SMALL = {"image_size": 256, "latent_volume_size": 32, "latent_volume_depth": 8, "gen_latent_texture_size": 32,
         "gen_latent_texture_depth": 8, "warp_output_size": 32, "latent_volume_channels": 32,
         "gen_latent_texture_channels": 32, "gen_max_channels": 128, "dec_max_channels": 128,
         "gen_max_channels_unet3d": 128, "enc_channel_mult": 2, "gen_dummy_input_size": 4,
         "idt_output_channels": 128, "lpe_output_channels_expression": 64, "aug_warp_size": 256}
TOLERANCE = 1e-4


def load_their_code(repo: Path):
    """Import their network modules from ``repo`` with the few aliases their imports need."""
    sys.path.insert(0, str(repo))
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision.models as tv_models
    for arch in ("resnet18", "resnet50"):       # never download ImageNet weights
        original = getattr(tv_models, arch)
        setattr(tv_models, arch, lambda *a, _f=original, **k: _f(weights=None, num_classes=k.get("num_classes", 1000)))
    repos = types.ModuleType("repos")
    repos_resnet = types.ModuleType("repos.resnet")
    repos_resnet.ResNet18 = None                 # only for their custom_w option, off in the release
    sys.modules.update({"repos": repos, "repos.resnet": repos_resnet})
    import networks
    sys.modules["EmoPortraits"] = types.ModuleType("EmoPortraits")
    sys.modules["EmoPortraits.networks"] = networks
    from models.stage_1.volumetric_avatar.va_arguments import VolumetricAvatarConfig
    from networks import volumetric_avatar
    from networks.volumetric_avatar.head_pose_regressor import HeadPoseRegressor
    from utils import spectral_norm
    return types.SimpleNamespace(config=VolumetricAvatarConfig, nets=volumetric_avatar,
                                 head_pose=HeadPoseRegressor, spectral_norm=spectral_norm)


def their_args(code, repo: Path, overrides: dict):
    """Their model arguments: parser defaults + the released command line + ``overrides``."""
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    parser.add_argument("--num_gpus", default=1, type=int)
    parser.add_argument("--project_dir", default=str(repo))
    parser.add_argument("--image_size", default=256, type=int)
    parser.add_argument("--aug_warp_size", default=256, type=int)
    parser.add_argument("--num_source_frames", default=1, type=int)
    parser.add_argument("--num_target_frames", default=1, type=int)
    parser = code.config.add_argparse_args(parser)
    tokens = shlex.split((repo / "experiments" / "args.txt").read_text())
    tokens = tokens[tokens.index(next(t for t in tokens if t.endswith("train.py"))) + 1:]
    args, _ = parser.parse_known_args(tokens)
    args.num_gpus, args.project_dir = 1, str(repo)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


class TheirModel(torch.nn.Module):
    """Their stage-1 networks under their attribute names, reparameterised as their Model does."""

    def __init__(self, code, args):
        super().__init__()
        self.args, self.rank = args, 0
        cfg = code.config(args)
        v = code.nets
        self.local_encoder_nw = v.LocalEncoder(cfg.local_encoder_cfg)
        self.idt_embedder_nw = v.IdtEmbed(cfg.idt_embedder_cfg)
        self.expression_embedder_nw = v.ExpressionEmbed(cfg.exp_embedder_cfg)
        self.pose_unsqueeze_nw = torch.nn.Linear(args.lpe_output_channels_expression,
                                                 args.gen_max_channels * args.gen_embed_size ** 2, bias=False)
        self.warp_embed_head_orig_nw = torch.nn.Conv2d(args.gen_max_channels, args.gen_max_channels, 1, bias=False)
        self.xy_generator_nw = v.WarpGenerator(cfg.warp_generator_cfg)
        self.uv_generator_nw = v.WarpGenerator(cfg.warp_generator_cfg)
        self.volume_source_nw = v.VPN_ResBlocks(cfg.VPN_resblocks_source_cfg)
        self.volume_process_nw = v.Unet3D(cfg.unet3d_cfg)
        self.decoder_nw = v.Decoder(cfg.decoder_cfg)
        self.bn = torch.nn.BatchNorm1d(512, affine=False)   # in their state dict, unused at inference
        code.spectral_norm.apply_sp_to_nets(self)
        v.utils.apply_ws_to_nets(self)
        s, d = args.latent_volume_size, args.latent_volume_depth
        grid_s, grid_z = torch.linspace(-1, 1, s), torch.linspace(-1, 1, d)
        w, vv, u = torch.meshgrid(grid_z, grid_s, grid_s, indexing="ij")
        self.register_buffer("identity_grid_3d", torch.stack([u, vv, w, torch.ones_like(u)], 3).view(1, -1, 4),
                             persistent=False)


def randomise(model: torch.nn.Module, seed: int, power_iterations: int = 20) -> None:
    """Unit-scale random weights: norms' affine near (1, 0), converged spectral-norm vectors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() == 1 and leaf == "weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if type(hook).__name__ == "SpectralNorm":
                    for _ in range(power_iterations):
                        hook.compute_weight(module, do_power_iteration=True)


def their_forward(model: TheirModel, head_pose, source: torch.Tensor, driver: torch.Tensor) -> dict:
    """Their inference (notebooks/infer.py) on masked source and driver crops."""
    a = model.args
    b, c, s, d = source.shape[0], a.latent_volume_channels, a.latent_volume_size, a.latent_volume_depth
    sample = lambda x, grid: F.grid_sample(x.float(), grid.float(), padding_mode=a.grid_sample_padding_mode)
    out = {}
    with torch.no_grad():
        out["e_s"] = model.idt_embedder_nw.forward_image(source)
        latents = model.local_encoder_nw(source)
        theta_s = head_pose.forward(source)
        grid = model.identity_grid_3d.repeat_interleave(b, dim=0)
        rigid_s = grid.bmm(theta_s.float().inverse()[:, :3].transpose(1, 2)).view(-1, d, s, s, 3)
        dd = model.expression_embedder_nw({"source_img": source, "source_mask": torch.ones_like(source),
                                           "source_theta": theta_s, "target_img": source,
                                           "target_mask": torch.ones_like(source), "target_theta": theta_s},
                                          True, False)
        z_s, crop_s = dd["source_pose_embed"], dd["source_img_align"]
        embed_s = _their_embed(model, z_s, out["e_s"])
        xy = model.xy_generator_nw(embed_s)[0]
        v_s = model.volume_source_nw(latents.view(b, c, d, s, s))
        warped_s = sample(sample(v_s, rigid_s), xy)
        unit = v_s / v_s.abs().max()              # the warp on a unit-scale volume
        warped_unit = sample(sample(unit, rigid_s), xy)
        canonical = model.volume_process_nw(warped_s, {})
        theta_d = head_pose.forward(driver)
        rigid_d = grid.bmm(theta_d[:, :3].transpose(1, 2)).view(-1, d, s, s, 3)
        dd = model.expression_embedder_nw({"source_img": driver, "source_mask": torch.ones_like(driver),
                                           "source_theta": theta_d, "target_img": driver,
                                           "target_mask": torch.ones_like(driver), "target_theta": theta_d},
                                          True, False)
        z_d, crop_d = dd["target_pose_embed"], dd["target_img_align"]
        uv = model.uv_generator_nw(_their_embed(model, z_d, out["e_s"]))[0]
        driven = sample(sample(canonical, uv), rigid_d).view(b, c * d, s, s)
        image = model.decoder_nw({}, {}, driven, False)[0]
    out.update(v_s=v_s, pose_s=theta_s[:, :3], z_s=z_s, crop_s=crop_s, crop_d=crop_d, warped_unit=warped_unit, grid_s=xy, warped_s=warped_s, canonical=canonical,
               pose_d=theta_d[:, :3], z_d=z_d, grid_d=uv, driven=driven, image=image)
    return out


def _their_embed(model: TheirModel, z: torch.Tensor, e_s: torch.Tensor) -> dict:
    """Their predict_embed for one frame (va.py): the 'orig' embedding both generators read."""
    n = model.args.gen_embed_size
    pose = model.pose_unsqueeze_nw(z).view(z.shape[0], -1, n, n)
    emb = model.warp_embed_head_orig_nw((pose + e_s) * 0.5)
    return {"orig": emb.view(z.shape[0], emb.shape[1], n * n)}


def our_modules(model, source: torch.Tensor, driver: torch.Tensor, ref: dict) -> dict:
    """Each of our modules on THEIR inputs to it (module-by-module parity), plus the warps."""
    from megaportraits_export.convert.emoportraits.model import rigid_grid
    from megaportraits_export.warp import invert_pose, sample_volume
    sb, db, gen = model.source_branch, model.driver_branch, model.generator
    with torch.no_grad():
        v_s = sb.appearance_encoder(source)
        warp_s = lambda v: sample_volume(sample_volume(v, rigid_grid(invert_pose(ref["pose_s"]), ref["grid_s"])),
                                         ref["grid_s"])
        warped_s = warp_s(ref["v_s"])
        warped_unit = warp_s(ref["v_s"] / ref["v_s"].abs().max())
        expressed = sample_volume(ref["canonical"], ref["grid_d"])
        driven = sample_volume(expressed, rigid_grid(ref["pose_d"], ref["grid_d"])).flatten(1, 2)
        encoder = db.expression_encoder
        z_of_crop = lambda crop: encoder.to_expression(F.adaptive_avg_pool2d(
            encoder.to_features(encoder.trunk(_normalised(crop))), encoder.pool_size).flatten(1))
        return dict(
            crop_s=encoder.aligned_crop(source, ref["pose_s"]), z_s_of_crop=z_of_crop(ref["crop_s"]),
            crop_d=encoder.aligned_crop(driver, ref["pose_d"]), z_d_of_crop=z_of_crop(ref["crop_d"]),
            v_s=v_s, e_s=sb.global_descriptor(source), pose_s=db.head_pose(source),
            z_s=db.expression_encoder(source, ref["pose_s"]), grid_s=sb.source_warp(ref["z_s"], ref["e_s"]),
            warped_s=warped_s, warped_unit=warped_unit, canonical=sb.canonical_generator(ref["warped_s"]), pose_d=db.head_pose(driver),
            z_d=db.expression_encoder(driver, ref["pose_d"]), grid_d=gen.driver_warp(ref["z_d"], ref["e_s"]),
            driven=driven,
            image=gen.image_generator(ref["driven"].unflatten(1, (ref["canonical"].shape[1], -1))))


def _normalised(x):
    from megaportraits_export.convert.emoportraits.networks import _imagenet_normalised
    return _imagenet_normalised(x)


def our_end_to_end(model, source: torch.Tensor, driver: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(source, driver)["image"]


def key_layout(state: dict) -> dict:
    return {k: list(v.shape) for k, v in state.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, type=Path, help="a checkout of neeek2303/EMOPortraits")
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", choices=("smooth", "noise"), default="smooth",
                   help="random test images: smooth (photo-like) or per-pixel noise (harsher on resampling)")
    p.add_argument("--bundle-dir", type=Path, help="also export an ORT bundle there and compare it")
    p.add_argument("--reuse-bundle", action="store_true",
                   help="use the bundle already in --bundle-dir (exported by an earlier run with the same --size "
                        "and --seed, hence the same weights) instead of exporting again")
    p.add_argument("--bundle-only", action="store_true",
                   help="with --bundle-dir: compare only the bundle and the SDK with their forward")
    p.add_argument("--write-fixture", type=Path, help="write their full key layout (names, shapes) as JSON")
    a = p.parse_args(argv)
    if not (a.repo / "models" / "stage_1" / "volumetric_avatar" / "va_arguments.py").is_file():
        print(f"error: {a.repo} is not a checkout of EMOPortraits (no models/stage_1/volumetric_avatar); "
              "give --repo the repository root", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    code = load_their_code(a.repo.resolve())
    args = their_args(code, a.repo.resolve(), SMALL if a.size == "small" else {})
    t0 = time.time()
    theirs = TheirModel(code, args).eval()
    randomise(theirs, a.seed)
    pose_net = __import__("torchvision").models.resnet18(weights=None, num_classes=9)
    randomise(pose_net, a.seed + 1)
    with torch.no_grad():                    # realistic BatchNorm statistics and a near-identity pose
        for m in pose_net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        pose_net.fc.weight.mul_(0.01)
        pose_net.fc.bias.copy_(torch.tensor([1.0, 1, 1, 0.1, -0.1, 0.05, 0.02, -0.03, 0.01]))
    print(f"built their networks ({a.size}) in {time.time() - t0:.1f} s: "
          f"{sum(p.numel() for p in theirs.parameters()) / 1e6:.2f}M parameters", flush=True)
    work = Path(tempfile.mkdtemp(prefix="emo-parity-"))
    checkpoint, pose_file = work / "000_model.pth", work / "head_pose_regressor.pth"
    torch.save(theirs.state_dict(), checkpoint)
    torch.save(pose_net.state_dict(), pose_file)
    # their train.py's args.txt beside the checkpoint: one "name: value" line per argument
    (work / "args.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(vars(args).items())))
    print(f"their-layout checkpoint, head-pose file and args.txt in {work}")
    if a.write_fixture:
        a.write_fixture.parent.mkdir(parents=True, exist_ok=True)
        a.write_fixture.write_text(json.dumps({
            "source": "neeek2303/EMOPortraits, networks built by tools/parity_emoportraits.py --size " + a.size,
            "model": key_layout(theirs.state_dict()), "head_pose": key_layout(pose_net.state_dict())}, indent=0))
        print(f"wrote the key layout ({len(theirs.state_dict())} + {len(pose_net.state_dict())} keys) to "
              f"{a.write_fixture}")

    from megaportraits_export.convert.emoportraits.command import config_from_arguments, convert_checkpoint
    config = config_from_arguments(vars(args))
    ours, conversion = convert_checkpoint(checkpoint, pose_file, config)
    print(f"converted: {conversion.used} keys used, dropped {conversion.dropped}, {conversion.recomputed} "
          f"recomputed buffers; folds {conversion.folded}")

    head_pose = code.head_pose(str(pose_file), False)
    g = torch.Generator().manual_seed(a.seed + 2)
    size = args.image_size
    # 8-bit images (what the SDK reads), as floats in [0, 1]: per-pixel noise, or smooth random
    # images (16x16 noise, bicubic to full size) closer to photos' local statistics
    if a.inputs == "noise":
        source_u8, driver_u8 = (torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
                                for _ in range(2))
    else:
        source_u8, driver_u8 = (
            (F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
            for _ in range(2))
    source, driver = (x.permute(2, 0, 1)[None].float() / 255 for x in (source_u8, driver_u8))
    t0 = time.time()
    ref = their_forward(theirs, head_pose, source, driver)
    t_theirs = time.time() - t0
    failed = []
    if a.bundle_only:
        print(f"their forward {t_theirs:.1f} s (module-by-module and PyTorch end-to-end skipped: --bundle-only)")
    else:
        failed = _compare_modules(ours, source, driver, ref, t_theirs)
    ok = not failed
    if a.bundle_dir:
        ok = _bundle_parity(ours, config, a.bundle_dir, source, driver, ref["image"], a.reuse_bundle) and ok
        ok = _sdk_parity(a.bundle_dir, source_u8.numpy(), driver_u8.numpy(), ref["image"]) and ok
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


def _compare_modules(ours, source, driver, ref: dict, t_theirs: float) -> list:
    """Print each of our modules against theirs (on their inputs) and the PyTorch end-to-end
    image; return the names of the modules beyond tolerance."""
    t0 = time.time()
    got = our_modules(ours, source, driver, ref)
    image = our_end_to_end(ours, source, driver)
    t_ours = time.time() - t0
    print(f"forward: theirs {t_theirs:.1f} s, ours {t_ours:.1f} s")
    print("module by module (each of ours on their inputs to it):")
    ref.update(z_s_of_crop=ref["z_s"], z_d_of_crop=ref["z_d"])
    failed = []
    for name in ("v_s", "e_s", "pose_s", "crop_s", "z_s", "z_s_of_crop", "grid_s", "warped_s", "warped_unit",
                 "canonical", "pose_d", "crop_d", "z_d", "z_d_of_crop", "grid_d", "driven", "image"):
        err = (ref[name].float() - got[name].float()).abs().max().item()
        scale = ref[name].float().abs().max().item()
        tolerance = TOLERANCE * max(1.0, scale)
        if err > tolerance:
            failed.append(name)
        print(f"  {name:11s} max abs err {err:.2e}  (max |value| {scale:.3g}, tolerance {tolerance:.1e}) "
              f"{'ok' if err <= tolerance else 'FAIL'}")
    image_mae = (ref["image"] - image).abs().mean().item()
    print(f"end to end (PyTorch, ours vs theirs): image mean abs err {image_mae:.2e} = {image_mae * 255:.4f}/255, "
          f"max {(ref['image'] - image).abs().max().item():.2e}")
    return failed


def _bundle_parity(model, config, bundle_dir: Path, source, driver, their_image, reuse: bool = False) -> bool:
    """Export the converted model and run its three graphs in ONNX Runtime on the same inputs."""
    import onnxruntime as ort
    from megaportraits_export.onnx_export import export_bundle
    from megaportraits import custom_ops_library
    t0 = time.time()
    if reuse and (bundle_dir / "manifest.json").is_file():
        bundle = bundle_dir
        print(f"reusing {bundle}")
    else:
        bundle = export_bundle(model, config, bundle_dir, preset=config.name,
                               provenance={"weights": "random, their layout (parity check)"})
        print(f"exported {bundle} in {time.time() - t0:.0f} s")
    manifest = json.loads((bundle / "manifest.json").read_text())
    options = ort.SessionOptions()
    try:
        options.register_custom_ops_library(custom_ops_library())
    except Exception as error:   # noqa: BLE001 - portable graphs then
        print(f"no custom-op library ({error}); running the portable graphs")
    sessions = {}
    for role in ("source", "driver", "generator"):
        graph = manifest["graphs"][role]
        sessions[role] = ort.InferenceSession(str(bundle / graph["file"]), options, providers=["CPUExecutionProvider"])
    run = lambda role, feeds: sessions[role].run(None, feeds)
    avatar = run("source", {sessions["source"].get_inputs()[0].name: source.numpy()})
    motion = run("driver", {sessions["driver"].get_inputs()[0].name: driver.numpy()})
    names = [i.name for i in sessions["generator"].get_inputs()]
    image = run("generator", dict(zip(names, [avatar[0], avatar[1], motion[0], motion[1]])))[0]
    mae = float(np.abs(image - their_image.numpy()).mean())
    worst = float(np.abs(image - their_image.numpy()).max())
    print(f"  bundle image vs their forward: mean abs {mae:.2e} = {mae * 255:.4f}/255, max abs {worst:.2e} "
          f"{'ok' if mae <= 1 / 255 else 'FAIL'}")
    return mae <= 1 / 255


def _sdk_parity(bundle_dir: Path, source_u8: np.ndarray, driver_u8: np.ndarray, their_image) -> bool:
    """The SDK's Animator on the bundle (no crop, no paste-back, absolute motion) vs their forward."""
    from megaportraits import Animator
    t0 = time.time()
    with Animator(bundle_dir, provider="cpu", crop=False, paste_back=False, motion="absolute",
                  background="generated") as animator:
        frame = animator.animate_frame(animator.prepare(source_u8), driver_u8)
    theirs = their_image[0].permute(1, 2, 0).numpy()
    mae = float(np.abs(frame.astype(np.float64) / 255 - theirs).mean())
    print(f"  SDK Animator frame (uint8) vs their forward: mean abs {mae:.2e} = {mae * 255:.4f}/255 "
          f"({time.time() - t0:.0f} s) {'ok' if mae <= 1 / 255 else 'FAIL'}")
    return mae <= 1 / 255


if __name__ == "__main__":
    sys.exit(main())
