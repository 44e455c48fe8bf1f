"""Datasets over real-video layouts, the preprocessing command, and the augmentations.

The "real" videos are written here from the synthetic renderer: small clips of known content, so
the frames a dataset returns and the crops preprocessing makes can be checked exactly.
"""
import json

import av
import cv2
import numpy as np
import pytest
import torch

from megaportraits.faces import CropBox, cut_crop
from megaportraits_export import preprocess
from megaportraits_export.data.augment import (
    ColourJitter,
    PairAugmentation,
    adjust_colour,
    random_thin_plate_spline_warp,
    thin_plate_spline_grid,
)
from megaportraits_export.data.synthetic import Identity, SyntheticTalkingHeads, random_motion_track, render_clip
from megaportraits_export.data.video_dataset import TalkingHeadVideos, count_frames, find_clips, read_frames

FRAMES = 8
HEAD_OFFSET = (40, 16)  # where the 96-px head render sits in the 160x128 "camera" frame
IDENTITY_SEEDS = (4, 7, 9)  # heads the Haar detector finds in every frame


def camera_frames(seed):
    """A clip of a synthetic head talking, placed off-centre in a wider frame."""
    clip = render_clip(Identity.sample(seed), random_motion_track(np.random.default_rng(seed), FRAMES), 96)
    x, y = HEAD_OFFSET
    return np.stack([cv2.copyMakeBorder(f, y, 128 - 96 - y, x, 160 - 96 - x, cv2.BORDER_REPLICATE) for f in clip])


def write_mp4(path, frames, fps=25):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def write_pngs(folder, frames):
    folder.mkdir(parents=True)
    for index, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def clips():
    return {seed: camera_frames(seed) for seed in IDENTITY_SEEDS}


@pytest.fixture()
def voxceleb_root(tmp_path, clips):
    root = tmp_path / "vox"
    for seed, frames in clips.items():
        write_mp4(root / f"id{seed:05d}" / "videoA" / "00001.mp4", frames)
    write_mp4(root / "id00004" / "videoB" / "00002.mp4", clips[4][::-1].copy())
    return root


@pytest.fixture()
def frames_root(tmp_path, clips):
    root = tmp_path / "frames"
    for seed, frames in clips.items():
        write_pngs(root / f"id{seed:05d}" / "videoA" / "00001", frames)
    return root


def test_find_clips_in_both_layouts(voxceleb_root, frames_root):
    vox = find_clips(voxceleb_root)
    assert [c.key for c in vox] == ["id00004/videoA/00001", "id00004/videoB/00002",
                                    "id00007/videoA/00001", "id00009/videoA/00001"]
    assert all(c.is_video_file and count_frames(c) == FRAMES for c in vox)
    frames = find_clips(frames_root)
    assert len(frames) == 3 and not frames[0].is_video_file and count_frames(frames[0]) == FRAMES


def test_frames_read_back(voxceleb_root, frames_root, clips):
    png = read_frames(find_clips(frames_root)[1], [5, 2])
    assert np.array_equal(png[0], clips[7][5]) and np.array_equal(png[1], clips[7][2])
    mp4 = read_frames(find_clips(voxceleb_root)[0], [3])[0]
    assert mp4.shape == (128, 160, 3)
    assert np.abs(mp4.astype(int) - clips[4][3]).mean() < 4.0, "H.264 keeps the frame within a few levels"


def test_dataset_items_over_frames_layout(frames_root, clips):
    dataset = TalkingHeadVideos(frames_root, size=64, seed=3, length=10)
    assert len(dataset) == 10 and dataset.identities == ["id00004", "id00007", "id00009"]
    item = dataset[4]
    for key in ("source", "driver", "driver_input", "source2", "driver2", "driver2_input"):
        assert item[key].shape == (3, 64, 64) and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    assert torch.equal(item["driver"], item["driver_input"]), "no augmentation -> the same image"
    assert int(item["identity"]) != int(item["identity2"])

    def frames_of(identity_index):
        seed = int(dataset.identities[identity_index][2:])
        square = clips[seed][:, :, 16:144]  # the centre square of each 160x128 frame ...
        return [torch.from_numpy(cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA)).permute(2, 0, 1).float() / 255
                for f in square]          # ... resized like the dataset does

    first, second = frames_of(int(item["identity"])), frames_of(int(item["identity2"]))
    source_at = [i for i, f in enumerate(first) if torch.equal(f, item["source"])]
    driver_at = [i for i, f in enumerate(first) if torch.equal(f, item["driver"])]
    assert len(source_at) == 1 and len(driver_at) == 1 and source_at != driver_at, "two frames of one clip"
    assert any(torch.equal(f, item["source2"]) for f in second)
    assert all(torch.equal(item[k], dataset[4][k]) for k in item), "items are reproducible"


def test_dataset_over_voxceleb_layout_with_augmentation(voxceleb_root):
    augmentation = PairAugmentation(flip_probability=1.0)
    dataset = TalkingHeadVideos(voxceleb_root, size=48, augmentation=augmentation)
    assert len(dataset) == 4
    item = dataset[1]
    assert item["source"].shape == (3, 48, 48)
    assert not torch.equal(item["driver"], item["driver_input"]), "the driver's input is warped and recoloured"


def test_dataset_errors(tmp_path, clips):
    write_pngs(tmp_path / "one" / "id1" / "v" / "c", clips[4][:3])
    with pytest.raises(ValueError, match="needs clips of at least two"):
        TalkingHeadVideos(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no clips under"):
        TalkingHeadVideos(tmp_path / "empty")


def head_centre(seed):
    """Centre of the rendered head square inside the camera frame (the head sits near it)."""
    return HEAD_OFFSET[0] + 48, HEAD_OFFSET[1] + 48


@pytest.mark.parametrize("layout", ["voxceleb", "frames"])
def test_preprocess_one_box_per_clip(layout, voxceleb_root, frames_root, tmp_path, clips, capsys):
    source = voxceleb_root if layout == "voxceleb" else frames_root
    out = tmp_path / "cropped"
    assert preprocess.main([str(source), str(out), "--size", "64", "--detect-every", "3"]) == 0
    records = [json.loads(line) for line in (out / "crops.jsonl").read_text().splitlines()]
    assert len(records) == len(find_clips(source))
    for record in records:
        cx, cy, side = record["box"]
        assert record["frames"] == FRAMES and record["mode"] == "clip"
        assert abs(cx - head_centre(0)[0]) < 10 and abs(cy - head_centre(0)[1]) < 14, "crop centred on the head"
        assert 60 < side < 140
    cropped = find_clips(out)
    assert [c.key for c in cropped] == [r["clip"] for r in records]
    assert all(count_frames(c) == FRAMES for c in cropped)
    if layout == "frames":  # lossless: every output frame is exactly the one box cut from its input
        record = records[0]
        box = CropBox.from_centre(*record["box"])
        for index, frame in enumerate(read_frames(cropped[0], range(FRAMES))):
            assert np.array_equal(frame, cut_crop(clips[4][index], box, 64))
    assert "cropped 3 of 3 clips" in capsys.readouterr().out if layout == "frames" else True


def test_preprocess_smoothed_track_as_mp4(frames_root, tmp_path):
    out = tmp_path / "tracked"
    assert preprocess.main([str(frames_root), str(out), "--size", "48", "--box", "track", "--format", "mp4",
                            "--detect-every", "2", "--smooth", "2"]) == 0
    records = [json.loads(line) for line in (out / "crops.jsonl").read_text().splitlines()]
    for record in records:
        boxes = np.array(record["boxes"])
        assert boxes.shape == (FRAMES, 3)
        assert np.abs(np.diff(boxes, axis=0)).max() < 4.0, "the smoothed track moves gently"
    assert [c.path.suffix for c in find_clips(out)] == [".mp4"] * 3
    assert read_frames(find_clips(out)[0], [0])[0].shape == (48, 48, 3)


def test_preprocess_reports_bad_input(tmp_path, capsys):
    assert preprocess.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1  # as megaportraits: user errors exit 1
    assert "is not a directory" in capsys.readouterr().err
    assert preprocess.smoothed_track(np.array([[0, 0, 10], [np.nan] * 3, [4, 2, 14.0]]), 0).tolist() == \
        [[0, 0, 10], [2, 1, 12], [4, 2, 14]]


# ---------------------------------------------------------------------------------- augmentation

def test_colour_adjustments_by_hand():
    torch.manual_seed(0)
    image = torch.rand(3, 8, 8) * 0.8 + 0.1
    assert torch.allclose(adjust_colour(image, 1.0, 1.0, 1.0, 0.0), image)
    assert torch.allclose(adjust_colour(image, 1.0, 1.0, 1.0, 1.0), image, atol=1e-5), "a full hue turn"
    grey = adjust_colour(image, 1.0, 1.0, 0.0, 0.0)
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    expected_grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    assert torch.allclose(grey[0], expected_grey, atol=1e-6)
    assert torch.allclose(adjust_colour(image * 0.5, 2.0, 1.0, 1.0, 0.0), image.clamp(0, 1))
    flat = adjust_colour(image, 1.0, 0.0, 1.0, 0.0)
    assert float(flat.std()) < float(image.std()) * 0.7


def test_thin_plate_spline_moves_control_points_and_nothing_else():
    size = 8
    centres = (np.arange(size) * 2 + 1) / size - 1
    control = np.array([[centres[1], centres[1]], [centres[6], centres[2]], [centres[3], centres[6]],
                        [centres[5], centres[5]], [centres[0], centres[7]]])
    displacement = np.random.default_rng(0).normal(0, 0.05, control.shape)
    grid = thin_plate_spline_grid(control, displacement, size, size, resolution=size)[0].double()
    for (x, y), d in zip(control, displacement):
        i, j = int(np.argmin(np.abs(centres - y))), int(np.argmin(np.abs(centres - x)))
        np.testing.assert_allclose(grid[i, j].numpy(), [x + d[0], y + d[1]], atol=1e-5)
    still = thin_plate_spline_grid(control, np.zeros_like(control), size, size)[0]
    np.testing.assert_allclose(still[..., 0].numpy(), np.tile(centres, (size, 1)), atol=1e-6)
    image = torch.rand(3, 32, 32)
    warped = random_thin_plate_spline_warp(image, np.random.default_rng(1), strength=0.05)
    assert warped.shape == image.shape and 0.0 < float((warped - image).abs().mean()) < 0.25
    assert torch.allclose(random_thin_plate_spline_warp(image, np.random.default_rng(1), strength=0.0), image,
                          atol=1e-5)


def test_pair_augmentation_keeps_the_pair_consistent():
    torch.manual_seed(0)
    frame = torch.rand(3, 16, 16)
    augmentation = PairAugmentation(flip_probability=1.0, colour=ColourJitter(0.3, 0.3, 0.3, 0.05))
    source, driver, driver_input, flipped = augmentation(frame, frame.clone(), np.random.default_rng(0))
    assert flipped
    assert torch.equal(source, driver), "same flip and same jitter for source and driver"
    assert not torch.equal(driver, driver_input)
    plain = PairAugmentation(flip_probability=1.0, colour=None, driver_colour=None, warp_strength=0.0)
    source, driver, driver_input, _ = plain(frame, frame * 0.5, np.random.default_rng(0))
    assert torch.equal(source, frame.flip(-1)) and torch.equal(driver, (frame * 0.5).flip(-1))
    assert torch.equal(driver_input, driver)


def test_synthetic_flip_mirrors_the_pose_labels():
    plain = dict(colour=None, driver_colour=None, warp_strength=0.0)
    kept = SyntheticTalkingHeads(4, size=32, augmentation=PairAugmentation(flip_probability=0.0, **plain))[2]
    flipped = SyntheticTalkingHeads(4, size=32, augmentation=PairAugmentation(flip_probability=1.0, **plain))[2]
    assert torch.equal(flipped["driver"], kept["driver"].flip(-1))
    sign = torch.tensor([1, -1, 1, -1, -1, 1, 1.0])  # scale, yaw, pitch, roll, tx, ty, tz
    assert torch.allclose(flipped["driver_pose_params"], kept["driver_pose_params"] * sign)
    assert flipped["driver_expression_params"][4] == -kept["driver_expression_params"][4]  # gaze_x


def test_preprocess_workers_match_one_process(frames_root, tmp_path):
    """--workers spreads clips over processes; the crops are the same as in one process."""
    common = ["--size", "32", "--detector", "centre"]
    assert preprocess.main([str(frames_root), str(tmp_path / "one"), *common]) == 0
    assert preprocess.main([str(frames_root), str(tmp_path / "two"), *common, "--workers", "2"]) == 0
    assert (tmp_path / "one" / "crops.jsonl").read_text() == (tmp_path / "two" / "crops.jsonl").read_text()
    # --detector centre: the largest centred square of the 160x128 frames
    assert json.loads((tmp_path / "one" / "crops.jsonl").read_text().splitlines()[0])["box"] == [80.0, 64.0, 128.0]
    for a, b in zip(find_clips(tmp_path / "one"), find_clips(tmp_path / "two")):
        assert all(np.array_equal(x, y) for x, y in zip(read_frames(a, range(FRAMES)), read_frames(b, range(FRAMES))))
