"""Training on the `tiny` preset: the loss goes down, resume is exact, two gloo processes agree,
checkpoints load without executing code, configs reject typos."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from megaportraits_export.data import SyntheticTalkingHeads
from megaportraits_export.training.config import ConfigError, config_from_dict, load_config
from megaportraits_export.training.distributed import DistributedContext, setup, teardown
from megaportraits_export.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_test.toml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(out_dir, **sections):
    cfg = load_config(TINY_CONFIG).replace("log", out_dir=str(out_dir), progress=False)
    for section, changes in sections.items():
        cfg = cfg.replace(section, **changes)
    return cfg


def tiny_heads(items: int) -> SyntheticTalkingHeads:
    return SyntheticTalkingHeads(num_identities=4, size=64, seed=3, length=items)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    cfg = tiny_config(tmp_path, pose_pretrain={"steps": 0},
                      losses={"cycle": False, "weights": {"perceptual": 0.0, "adversarial": 0.0,
                                                          "feature_matching": 0.0, "cycle": 0.0, "l1": 1.0}},
                      optim={"lr": 3e-3, "lr_min": 3e-3},
                      train={"steps": 8, "batch_size": 2, "grad_accum": 1})
    trainer = Trainer(cfg, DistributedContext(), dataset=tiny_heads(2))   # every batch: the same 2 items
    losses = [trainer.train_step()["total"] for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert min(losses[4:]) < min(losses[:4]), losses


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Pose pretraining, GAN, cycle loss, grad accumulation: stop after step 1, resume, compare."""
    cfg = tiny_config(tmp_path, train={"steps": 3, "batch_size": 1, "grad_accum": 2},
                      pose_pretrain={"steps": 1, "batch_size": 1})
    data = tiny_heads(6)
    first = Trainer(cfg, DistributedContext(), dataset=data)
    first.pose_pretrain_step()
    first.train_step()
    state_path = first.save()
    continued = [first.train_step() for _ in range(2)]

    torch.manual_seed(12345)          # disturb every generator: resume must restore them
    resumed = Trainer(cfg, DistributedContext(), dataset=data)
    resumed.load(state_path)
    assert (resumed.step, resumed.pose_step) == (1, 1)
    again = [resumed.train_step() for _ in range(2)]

    for a, b in zip(continued, again):
        assert set(a) == set(b)
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for name, value in _params(first.model).items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name
    for name, value in _params(first.discriminator).items():
        assert torch.allclose(value, resumed.discriminator.state_dict()[name], atol=1e-6), name


def test_checkpoints_load_without_executing_code(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 1, "batch_size": 1, "grad_accum": 1},
                      pose_pretrain={"steps": 0})
    trainer = Trainer(cfg, DistributedContext(), dataset=tiny_heads(2))
    trainer.run(progress=False)
    state = torch.load(tmp_path / "state_last.pt", map_location="cpu", weights_only=True)
    assert state["training"]["step"] == 1
    assert {"model", "config", "provenance"} <= set(state)
    assert state["training"]["rng"][0]["torch"].dtype == torch.uint8
    from megaportraits_export.checkpoint import load_model_from_checkpoint

    model, config, provenance = load_model_from_checkpoint(tmp_path / "model_last.pt")
    assert config.name == "tiny" and provenance["steps"]["main"] == 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert list((tmp_path / "images").glob("*.png")), "no image grid was logged"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cfg = tiny_config(out_dir, train={"steps": 2, "batch_size": 1, "grad_accum": 1, "device": "cpu"},
                      pose_pretrain={"steps": 1, "batch_size": 1},
                      losses={"gan_start_step": 1, "cycle": True, "discriminator_channels": 8,
                              "weights": {"perceptual": 0.0, "l1": 10.0}})   # GAN + cycle, no VGG
    ctx = setup("cpu")
    try:
        trainer = Trainer(cfg, ctx, dataset=tiny_heads(8))
        trainer.run(progress=False)
        torch.save({"model": trainer.model.state_dict(), "discriminator": trainer.discriminator.state_dict()},
                   Path(out_dir) / f"replica{rank}.pt")
    finally:
        teardown(ctx)


def test_two_gloo_processes_train_identical_replicas(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    replicas = [torch.load(tmp_path / f"replica{r}.pt", weights_only=True) for r in range(2)]
    for part in ("model", "discriminator"):
        for name, value in replicas[0][part].items():
            if name.endswith(("_u", "_v")):   # spectral-norm power-iteration vectors: per-process buffers
                continue
            assert torch.equal(value, replicas[1][part][name]), f"{part}.{name} differs between replicas"
    state = torch.load(tmp_path / "state_last.pt", weights_only=True)
    assert state["training"]["world_size"] == 2 and len(state["training"]["rng"]) == 2
    assert state["provenance"]["steps"]["processes"] == 2
    initial = Trainer(tiny_config(tmp_path / "init"), DistributedContext(), dataset=tiny_heads(2)).model
    moved = any(not torch.equal(v, replicas[0]["model"][k]) for k, v in initial.state_dict().items())
    assert moved, "the replicas never left their initial weights"


def test_config_rejects_unknown_keys_and_bad_choices():
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"train": {"step": 10}})
    with pytest.raises(ConfigError, match="unknown config section"):
        config_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="main_stage"):
        config_from_dict({"pose_pretrain": {"main_stage": "thawed"}})
    with pytest.raises(ValueError, match="unknown term"):
        Trainer(config_from_dict({"losses": {"weights": {"perceptul": 1.0}}}), DistributedContext(),
                dataset=tiny_heads(2))


def test_every_shipped_config_parses():
    for path in sorted((REPO / "configs").glob("*.toml")):
        load_config(path)


def test_train_command_resumes_its_own_run(tmp_path, capsys):
    from megaportraits_export import train

    base = ["--config", str(TINY_CONFIG), "--out-dir", str(tmp_path), "--no-progress"]
    assert train.main(base + ["--steps", "1"]) == 0
    assert train.main(base + ["--steps", "2", "--resume", "auto"]) == 0
    state = torch.load(tmp_path / "state_last.pt", weights_only=True)
    assert state["training"]["step"] == 2 and state["training"]["pose_step"] == 2
    assert "done: 2 pose-pretraining steps, 2 main steps" in capsys.readouterr().out
    assert train.main(["--config", str(tmp_path / "missing.toml")]) == 1  # as megaportraits: user errors exit 1
