"""The student network: shapes at every preset, the avatar index choosing the avatar's own tensors."""
import pytest
import torch

from megaportraits_export.student_config import STUDENT_PRESETS, StudentConfig, for_teacher, get_student_config
from megaportraits_export.networks.student import (StudentGraph, build_student, describe_student, table_values_per_avatar,
                                                    parameters_per_avatar)
from megaportraits_export.config import PRESETS


def _tiny(num_avatars=3, matte=False):
    torch.manual_seed(0)
    return build_student(get_student_config("tiny").replace(num_avatars=num_avatars, matte=matte)).eval()


@pytest.mark.parametrize("name", list(STUDENT_PRESETS))
def test_every_preset_renders_at_its_size_on_meta(name):
    config = STUDENT_PRESETS[name].replace(num_avatars=2)
    with torch.device("meta"):
        student = build_student(config)
        out = student(torch.empty(2, 3, config.image_size, config.image_size), torch.tensor([1, 0]))
    assert tuple(out.shape) == (2, 4 if config.matte else 3, config.image_size, config.image_size)
    # every base-model size has a student rendering at that size
    assert PRESETS[name].image_size == config.image_size
    assert for_teacher(name, config.image_size) is STUDENT_PRESETS[name]


def test_output_range_and_matte_split():
    student = _tiny(matte=True)
    image, matte = StudentGraph(student)(torch.rand(2, 3, 64, 64), torch.tensor([0, 2]))
    assert image.shape == (2, 3, 64, 64) and matte.shape == (2, 1, 64, 64)
    assert 0 <= image.min() and image.max() <= 1


def test_avatar_index_selects_that_avatars_tensors():
    student = _tiny()
    with torch.no_grad():  # distinct, non-trivial modulation per avatar
        for spade in student.avatar_parameters():
            spade.normal_(0, 0.5)
    driver = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batch = student(driver, torch.tensor([0, 1, 2]))
        alone = torch.cat([student(driver[i:i + 1], torch.tensor([i])) for i in range(3)])
        swapped = student(driver, torch.tensor([2, 1, 0]))
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
        assert (swapped[0] - batch[0]).abs().max() > 1e-3  # another avatar renders otherwise
        torch.testing.assert_close(swapped[1], batch[1])
        # changing avatar 2's tensors changes only the samples that render avatar 2
        for spade in student.avatar_parameters():
            spade[2].normal_(0, 0.5)
        changed = student(driver, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(changed[:2], batch[:2])
    assert (changed[2] - batch[2]).abs().max() > 1e-3


def test_avatar_gradients_reach_only_the_rendered_avatar():
    student = _tiny().train()
    student(torch.rand(2, 3, 64, 64), torch.tensor([1, 1])).mean().backward()
    for tensors in student.avatar_parameters():
        assert tensors.grad[1].abs().sum() > 0
        assert tensors.grad[0].abs().sum() == 0 and tensors.grad[2].abs().sum() == 0


def _trained_looking(student):
    """BatchNorm statistics and avatar maps away from their initial values, as after training; eval mode."""
    with torch.no_grad():
        student.train()
        for _ in range(3):
            student(torch.rand(4, 3, 64, 64) * 2, torch.tensor([0, 1, 2, 1]))
        for maps in student.avatar_parameters():
            maps.normal_(0, 0.3)
    student.eval()


def test_inference_copy_folds_every_batch_norm_and_computes_the_same():
    student = _tiny(matte=True)
    _trained_looking(student)
    folded = student.inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m is not folded.generator.to_rgb[0]
                   for m in folded.modules())
    # the SPADE tables are at each block's full resolution: nothing is resized at run time
    tables = [m for m in folded.modules() if type(m).__name__ == "AvatarTables"]
    assert [t.scale.shape[-1] for t in tables] == [s for s in student.config.block_sizes() for _ in (1, 2)]
    driver, index = torch.rand(3, 3, 64, 64), torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(folded(driver, index), student(driver, index), atol=1e-5, rtol=0)
    assert student.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())


def test_tables_above_full_tables_up_to_stay_capped_and_compute_the_same():
    """Above the preset's full_tables_up_to the folded tables keep the capped side and are
    upsampled per frame (bilinear weights sum to one, so folding the affine first is exact)."""
    config = get_student_config("tiny").replace(num_avatars=3, full_tables_up_to=8)
    student = build_student(config)
    _trained_looking(student)
    folded = student.inference()
    tables = [m for m in folded.modules() if type(m).__name__ == "AvatarTables"]
    sides = [size if size <= 8 else min(size, config.spade_cap) for size in config.block_sizes() for _ in (1, 2)]
    assert [t.scale.shape[-1] for t in tables] == sides and max(config.block_sizes()) > 8
    driver, index = torch.rand(3, 3, 64, 64), torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(folded(driver, index), student(driver, index), atol=1e-5, rtol=0)
    assert table_values_per_avatar(config) == sum(t.scale[0].numel() + t.shift[0].numel() for t in tables)


def test_subpixel_output_renders_the_last_block_at_half_size():
    config = get_student_config("tiny").replace(generator_channels=(16, 16, 8, 8, 8), subpixel_output=True)
    assert config.block_sizes()[-1] == 32
    student = build_student(config).eval()
    with torch.no_grad():
        assert student(torch.rand(1, 3, 64, 64), torch.tensor([0])).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="generator_channels"):
        get_student_config("tiny").replace(subpixel_output=True)


def test_spade_tensors_are_capped_and_counted():
    config = STUDENT_PRESETS["paper512"]
    report = describe_student(config)
    assert max(b["spade_side"] for b in report["generator_blocks"]) == config.spade_cap == 64
    assert report["generator_blocks"][-1]["shape"] == [16, 512, 512]
    student = _tiny(num_avatars=4)
    assert sum(p.numel() for p in student.avatar_parameters()) == 4 * parameters_per_avatar(student.config)


def test_bad_configs_are_refused():
    base = get_student_config("tiny")
    with pytest.raises(ValueError, match="generator_channels"):
        base.replace(generator_channels=(8, 8))
    with pytest.raises(ValueError, match="multiple of 32"):
        base.replace(encoder_input_size=48)
    with pytest.raises(ValueError, match="unknown student preset"):
        get_student_config("huge")
    with pytest.raises(ValueError, match="image size 96"):
        for_teacher("other", 96)
    assert StudentConfig.from_dict(base.to_dict()) == base


def test_describe_command_prints_the_student(capsys):
    from megaportraits_export.describe import main

    assert main(["--preset", "paper512", "--student"]) == 0
    out = capsys.readouterr().out
    assert "per avatar: 6,619,136 parameters" in out and "16x512x512" in out
    assert main(["--preset", "emoportraits", "--student"]) == 1
    assert "no student preset" in capsys.readouterr().err
