"""Distillation: the loss falls on a fixed batch, a resumed run equals an uninterrupted one, and
the command turns a teacher bundle and avatar photos into a student bundle."""
import json

import cv2
import numpy as np
import pytest
import torch

from megaportraits import manifest as mf
from megaportraits_export.distill.targets import Targets
from megaportraits_export.distill.trainer import (CHECKPOINT, DistillLoss, DistillOptions, batch_tensors, distill,
                                                  make_optimizer, sample_batch)
from megaportraits_export.networks.student import build_student
from megaportraits_export.student_config import get_student_config


def _targets(avatars=2, frames=6, size=64, channels=3, seed=0):
    """Smooth random drivers and per-avatar renderings that depend on the driver (a learnable map)."""
    rng = np.random.default_rng(seed)
    small = rng.random((frames, 8, 8, 3)).astype(np.float32)
    drivers = np.stack([cv2.resize(f, (size, size)) for f in small])
    tint = rng.random((avatars, 1, 1, 1, channels)).astype(np.float32)
    renderings = 0.5 * np.concatenate([drivers, drivers.mean(-1, keepdims=True)], -1)[None, ..., :channels] + 0.5 * tint
    return Targets((drivers * 255).astype(np.uint8), (renderings.clip(0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("channels", [3, 4])
def test_distillation_lowers_the_loss_on_a_fixed_batch(channels, one_torch_thread):
    targets = _targets(channels=channels)
    torch.manual_seed(0)
    student = build_student(get_student_config("tiny").replace(num_avatars=2, matte=channels == 4))
    options = DistillOptions(lr=2e-3, avatar_lr=5e-3, perceptual_weight=0.0)
    optimizer, loss_fn = make_optimizer(student, options), DistillLoss(0.0)
    drivers, index, wanted = batch_tensors(targets, np.array([0, 1, 0, 1]), np.array([0, 1, 2, 3]), "cpu")
    losses = []
    for _ in range(40):
        terms = loss_fn(student(drivers, index), wanted)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        losses.append(float(terms["total"].detach()))
    assert ("matte_l1" in terms) == (channels == 4)
    assert losses[-1] < 0.5 * losses[0], losses


def test_perceptual_term_is_part_of_the_loss(one_torch_thread):
    targets = _targets()
    drivers, index, wanted = batch_tensors(targets, np.array([0, 1]), np.array([0, 1]), "cpu")
    terms = DistillLoss(1.0)(torch.rand_like(wanted), wanted)
    assert set(terms) == {"l1", "perceptual", "total"} and float(terms["perceptual"]) > 0
    assert float(DistillLoss(1.0)(wanted, wanted)["total"]) < 1e-6


def test_batches_depend_only_on_seed_and_step():
    targets = _targets()
    a = sample_batch(targets, 7, 4, seed=3)
    b = sample_batch(targets, 7, 4, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, sample_batch(targets, 8, 4, seed=3)))


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, one_torch_thread):
    targets = _targets()
    config = get_student_config("tiny").replace(num_avatars=2)
    whole = distill(config, targets, tmp_path / "whole",
                    DistillOptions(steps=6, batch=2, save_every=3, perceptual_weight=0.0), device="cpu")
    distill(config, targets, tmp_path / "parts",
            DistillOptions(steps=3, batch=2, save_every=3, perceptual_weight=0.0), device="cpu")
    torch.manual_seed(123)  # the process's generators moved on meanwhile: the checkpoint restores them
    resumed = distill(config, targets, tmp_path / "parts",
                      DistillOptions(steps=6, batch=2, save_every=3, perceptual_weight=0.0), device="cpu")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.load(tmp_path / "parts" / CHECKPOINT, weights_only=False)["step"] == 6
    with pytest.raises(ValueError, match="another architecture"):
        distill(config.replace(num_avatars=3), targets, tmp_path / "parts", DistillOptions(steps=7), device="cpu")
    # a checkpoint of the same config written by an older network (other parameter names): one line
    state = torch.load(tmp_path / "parts" / CHECKPOINT, weights_only=False)
    state["student"] = {name.replace(".scale", ".tensors"): value for name, value in state["student"].items()}
    torch.save(state, tmp_path / "parts" / CHECKPOINT)
    with pytest.raises(ValueError, match="older student network"):
        distill(config, targets, tmp_path / "parts", DistillOptions(steps=7), device="cpu")


def test_the_distill_command_writes_a_student_bundle(tmp_path, bundle_factory, capsys, one_torch_thread):
    from megaportraits_export.__main__ import main
    from megaportraits_export.data.synthetic.parameters import Identity
    from megaportraits_export.data.synthetic.rendering import render

    photos = []
    for i, name in enumerate(("ann", "bob")):
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(render(Identity.sample(i), size=96), cv2.COLOR_RGB2BGR))
        photos.append(f"{name}={path}")
    out = tmp_path / "run"
    argv = ["distill", "--teacher", str(bundle_factory("tiny")), "--avatar", photos[0], "--avatar", photos[1],
            "-o", str(out), "--frames", "6", "--steps", "3", "--batch", "2", "--perceptual-weight", "0",
            "--threads", "1", "--device", "cpu", "--log-every", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "teacher targets 12/12" in err and "step 3/3" in err
    manifest = mf.load_manifest(out / "bundle")
    assert manifest.avatar_names() == ["ann", "bob"]
    assert manifest.student["teacher"]["manifest_sha256"] == mf.sha256_file(bundle_factory("tiny") / mf.MANIFEST_NAME)
    assert np.load(out / "targets" / "renderings.npy").shape == (2, 6, 64, 64, 3)
    # the stored targets are the teacher's renderings, not placeholders: they differ by avatar
    renderings = np.load(out / "targets" / "renderings.npy").astype(np.int16)
    assert np.abs(renderings[0] - renderings[1]).max() > 10


def test_the_student_records_the_teacher_its_targets_came_from(tmp_path, bundle_factory, capsys, one_torch_thread):
    """A teacher bundle that changes after the targets were rendered (an enhancer added, say) does
    not change what the student says it was distilled from."""
    import shutil

    from megaportraits_export.__main__ import main
    from megaportraits_export.data.synthetic.parameters import Identity
    from megaportraits_export.data.synthetic.rendering import render

    teacher = tmp_path / "teacher"
    shutil.copytree(bundle_factory("tiny"), teacher)
    original = mf.sha256_file(teacher / mf.MANIFEST_NAME)
    photo = tmp_path / "ann.png"
    cv2.imwrite(str(photo), cv2.cvtColor(render(Identity.sample(3), size=96), cv2.COLOR_RGB2BGR))
    def argv(steps):
        return ["distill", "--teacher", str(teacher), "--avatar", f"ann={photo}", "-o", str(tmp_path / "run"),
                "--frames", "4", "--steps", str(steps), "--batch", "2", "--perceptual-weight", "0",
                "--threads", "1", "--device", "cpu"]
    assert main(argv(2)) == 0
    recorded = json.loads((tmp_path / "run" / "targets" / "teacher.json").read_text())
    assert recorded["manifest_sha256"] == original
    manifest = json.loads((teacher / mf.MANIFEST_NAME).read_text())
    manifest.setdefault("provenance", {})["note"] = "changed after the targets were rendered"
    (teacher / mf.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    assert mf.sha256_file(teacher / mf.MANIFEST_NAME) != original
    capsys.readouterr()
    assert main(argv(3)) == 0  # resumes on the same targets
    assert "manifest changed since these targets were rendered" in capsys.readouterr().err
    student = mf.load_manifest(tmp_path / "run" / "bundle")
    assert student.student["teacher"]["manifest_sha256"] == original


@pytest.mark.parametrize("avatar, message", [("ann", "is not NAME=IMAGE"), ("ann=/no/such.png", "is not a file")])
def test_bad_avatars_are_one_line(tmp_path, capsys, avatar, message):
    from megaportraits_export.__main__ import main

    assert main(["distill", "--teacher", str(tmp_path), "--avatar", avatar, "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_distill_fidelity_refuses_an_unwritable_json_before_any_work(tmp_path, capsys):
    from megaportraits.bundle import DEMO_BUNDLE
    from megaportraits_export.distill import fidelity

    student = DEMO_BUNDLE.parent / "demo_student"
    code = fidelity.main(["--student", str(student), "--teacher", str(DEMO_BUNDLE), "--frames", "1",
                          "--json", str(tmp_path / "missing" / "figures.json")])
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
