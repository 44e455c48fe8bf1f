"""The synthetic talking-head renderer: deterministic, and its parameters act where they should."""
import dataclasses

import numpy as np
import pytest
import torch

from megaportraits_export.data.synthetic import camera as synthetic_camera
from megaportraits_export.data.synthetic import geometry, rendering
from megaportraits_export.data.synthetic import (
    EVAL_IDENTITY_SEED_OFFSET,
    Expression,
    HeadMotion,
    Identity,
    Pose,
    SyntheticTalkingHeads,
    cross_reenactment_ground_truth,
    random_motion_track,
    render,
    render_clip,
)

SIZE = 128
MAGENTA = (255, 0, 255)


def plain_identity(seed=5, **changes):
    """An identity on a black, untextured background so colour masks are unambiguous."""
    identity = Identity.sample(seed)
    return dataclasses.replace(identity, background=(0, 0, 0), background2=(0, 0, 0),
                               background_texture="plain", glasses=False, **changes)


def colour_mask(image, colour, tolerance=30):
    return np.abs(image.astype(int) - np.array(colour)).max(axis=-1) <= tolerance


def centroid(mask):
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, "colour not found in the image"
    return xs.mean(), ys.mean()


def test_same_arguments_give_identical_bytes():
    identity = Identity.sample(123)
    pose, expression = Pose(yaw=0.3, pitch=-0.1, tx=0.05), Expression(mouth_open=0.6, smile=0.4)
    first = render(identity, pose, expression, SIZE)
    rendering._background.cache_clear()
    geometry._static_geometry.cache_clear()
    second = render(Identity.sample(123), pose, expression, SIZE)
    assert first.dtype == np.uint8 and first.shape == (SIZE, SIZE, 3)
    assert first.tobytes() == second.tobytes()


def test_identity_seeds_give_distinct_people():
    identities = [Identity.sample(seed) for seed in range(20)]
    assert len(set(identities)) == 20
    images = [render(identity, size=64) for identity in identities[:8]]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).mean() > 5.0
    assert len({identity.hair_style for identity in identities}) >= 3
    assert len({identity.skin for identity in identities}) == 20


def test_mouth_opening_changes_the_lower_middle_face_only():
    identity = plain_identity()
    closed = render(identity, Pose(), Expression(mouth_open=0.0), SIZE).astype(int)
    opened = render(identity, Pose(), Expression(mouth_open=1.0), SIZE).astype(int)
    changed = np.abs(opened - closed).max(axis=-1) > 20
    assert changed.sum() > 30
    ys, xs = np.nonzero(changed)
    assert SIZE * 0.5 < ys.mean() < SIZE * 0.8, "mouth changes should sit in the lower face"
    assert abs(xs.mean() - SIZE / 2) < SIZE * 0.06, "mouth changes should be centred"
    corners = np.zeros_like(changed)
    for rows in (slice(0, 20), slice(-20, None)):
        for cols in (slice(0, 20), slice(-20, None)):
            corners[rows, cols] = True
    assert not (changed & corners).any()
    assert not changed[: SIZE // 2].any(), "nothing above the nose may move when the mouth opens"


def test_eye_closure_changes_the_eye_region():
    identity = plain_identity()
    opened = render(identity, Pose(), Expression(eye_closure=0.0), SIZE).astype(int)
    closed = render(identity, Pose(), Expression(eye_closure=1.0), SIZE).astype(int)
    changed = np.abs(opened - closed).max(axis=-1) > 20
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 20
    band = (synthetic_camera._Camera(Pose(), SIZE).head(np.array([[0.0, identity.eye_height, -identity.head_depth]]))
            / synthetic_camera._SHIFT_SCALE)[0, 1]
    assert np.abs(ys - band).max() < SIZE * 0.06, "only pixels around the eyes may change"
    left, right = (xs < SIZE / 2).sum(), (xs >= SIZE / 2).sum()
    assert left > 5 and right > 5, "both eyes close"


def test_yaw_moves_the_face_features_sideways_more_than_the_outline():
    identity = plain_identity(lips=MAGENTA, skin=(200, 160, 130))
    expression = Expression(mouth_open=0.3)
    lips_x = {}
    for yaw in (-0.4, 0.0, 0.4):
        image = render(identity, Pose(yaw=yaw), expression, SIZE)
        lips_x[yaw] = centroid(colour_mask(image, MAGENTA))[0]
    # Positive yaw turns the face toward image left (the documented convention).
    assert lips_x[0.4] < lips_x[0.0] - 4 < lips_x[-0.4] - 8
    assert abs(lips_x[0.0] - SIZE / 2) < 1.5


def test_translation_shifts_the_head():
    identity = plain_identity(skin=(0, 220, 0))
    centre = centroid(colour_mask(render(identity, Pose(), Expression(), SIZE), (0, 220, 0)))
    moved = centroid(colour_mask(render(identity, Pose(tx=0.1, ty=-0.05), Expression(), SIZE), (0, 220, 0)))
    # one normalised unit is SIZE / 2 pixels
    assert moved[0] - centre[0] == pytest.approx(0.1 * SIZE / 2, rel=0.15)
    assert moved[1] - centre[1] == pytest.approx(-0.05 * SIZE / 2, rel=0.2)


def test_scale_grows_the_head_area():
    identity = plain_identity(skin=(0, 220, 0))
    areas = [colour_mask(render(identity, Pose(scale=s), Expression(), SIZE), (0, 220, 0)).sum() for s in (1.0, 1.2)]
    assert areas[1] / areas[0] == pytest.approx(1.2 ** 2, rel=0.1)


def test_cross_reenactment_ground_truth_is_identity_a_with_motion_b():
    a, b = Identity.sample(1), Identity.sample(2)
    motion_b = HeadMotion(Pose(yaw=0.2, roll=0.1), Expression(mouth_open=0.8, eye_closure=0.5))
    truth = cross_reenactment_ground_truth(a, motion_b, 64)
    assert truth.tobytes() == render(a, motion_b.pose, motion_b.expression, 64).tobytes()
    assert truth.tobytes() != render(b, motion_b.pose, motion_b.expression, 64).tobytes()


def test_motion_track_is_smooth_and_alive():
    motions = random_motion_track(np.random.default_rng(3), frames=250, fps=25.0)
    poses = np.stack([m.pose.as_array() for m in motions])
    expressions = np.stack([m.expression.as_array() for m in motions])
    yaw_steps = np.abs(np.diff(poses[:, 1]))
    assert yaw_steps.max() < 0.05 and poses[:, 1].std() > 0.03
    assert expressions[:, 0].max() > 0.5 and (expressions[:, 0] < 0.05).any(), "talking with pauses"
    assert expressions[:, 2].max() > 0.9, "at least one full blink in 10 s"
    clip = render_clip(Identity.sample(4), motions[:5], 32)
    assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip[2], render(Identity.sample(4), motions[2].pose, motions[2].expression, 32))


def test_dataset_items():
    dataset = SyntheticTalkingHeads(num_identities=6, size=48, seed=1)
    item = dataset[7]
    for key in ("source", "driver", "driver_input", "source2", "driver2", "driver2_input"):
        assert item[key].shape == (3, 48, 48) and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    assert item["driver_pose_params"].shape == (7,) and item["driver_expression_params"].shape == (6,)
    for key in ("source_mask", "driver_mask", "source2_mask", "driver2_mask"):
        assert item[key].shape == (1, 48, 48) and 0.0 <= float(item[key].min()) <= float(item[key].max()) <= 1.0
    assert int(item["identity"]) == 7 % 6 and int(item["identity2"]) != int(item["identity"])
    again = dataset[7]
    assert all(torch.equal(item[key], again[key]) for key in item)
    # The pose parameters are the ones the driver was rendered with.
    identity = Identity.sample(int(item["identity"]))
    pose = Pose.from_model_parameters(item["driver_pose_params"].tolist())
    expression = Expression(*item["driver_expression_params"].tolist())
    expected = torch.from_numpy(render(identity, pose, expression, 48)).permute(2, 0, 1).float() / 255
    assert torch.allclose(expected, item["driver"], atol=2 / 255)


def test_evaluation_identities_are_held_out():
    train = SyntheticTalkingHeads(num_identities=50, size=32, split="train")
    evaluation = SyntheticTalkingHeads(num_identities=50, size=32, split="eval")
    assert not set(train.identity_seeds) & set(evaluation.identity_seeds)
    assert min(evaluation.identity_seeds) >= EVAL_IDENTITY_SEED_OFFSET > max(train.identity_seeds)
    with pytest.raises(ValueError, match="split must be"):
        SyntheticTalkingHeads(num_identities=5, split="test")


def test_pose_parameters_are_the_models_theta():
    """warp.pose_matrix on the model parameters inverts the renderer's head -> camera transform."""
    from megaportraits_export.warp import pose_matrix

    pose = Pose(scale=1.1, yaw=0.4, pitch=-0.2, roll=0.15, tx=0.05, ty=-0.03, tz=0.02)
    params = torch.from_numpy(pose.model_parameters())[None].double()
    theta = pose_matrix(params[:, :1].expand(-1, 3), params[:, 1:4], params[:, 4:7])[0].numpy()
    camera = synthetic_camera._Camera(pose, SIZE)
    head_points = np.random.default_rng(0).normal(size=(10, 3))
    camera_points = camera.to_camera(head_points)  # X = scale * HEAD_UNIT * R P + t
    canonical = camera_points @ theta[:, :3].T + theta[:, 3]
    np.testing.assert_allclose(canonical, head_points * synthetic_camera.HEAD_UNIT, atol=1e-6)  # float32 parameters
    round_trip = Pose.from_model_parameters(pose.model_parameters())
    np.testing.assert_allclose(round_trip.as_array(), pose.as_array(), atol=1e-6)


def test_mirrored_pose_renders_the_mirror_image():
    """A flipped image shows the mirrored pose: the lips move to the mirrored position."""
    identity = plain_identity(lips=MAGENTA)
    pose = Pose(yaw=0.3, roll=0.1, tx=0.06)
    flipped = render(identity, pose, Expression(mouth_open=0.5), SIZE)[:, ::-1]
    mirrored = render(identity, pose.mirrored(), Expression(mouth_open=0.5), SIZE)
    a, b = centroid(colour_mask(flipped, MAGENTA)), centroid(colour_mask(mirrored, MAGENTA))
    assert a == pytest.approx(b, abs=0.6)


def test_mask_is_the_foreground():
    """Changing only the backdrop changes exactly the pixels the mask leaves uncovered."""
    identity = Identity.sample(11)
    pose, expression = Pose(yaw=0.3, tx=0.05), Expression(mouth_open=0.4)
    image, mask = render(identity, pose, expression, SIZE, with_mask=True)
    other = dataclasses.replace(identity, background=(255, 0, 0), background2=(0, 0, 255), background_texture="plain")
    image_b, mask_b = render(other, pose, expression, SIZE, with_mask=True)
    assert np.array_equal(mask, mask_b) and np.array_equal(image, render(identity, pose, expression, SIZE))
    changed = np.abs(image.astype(int) - image_b.astype(int)).max(axis=-1) > 0
    assert not changed[mask == 255].any(), "the person hides the backdrop completely"
    assert changed[mask == 0].mean() > 0.99
    assert 0.2 < (mask > 127).mean() < 0.7 and mask[0, 0] == 0 and mask[SIZE // 2, SIZE // 2] == 255


def test_smile_brows_and_gaze_act_on_their_features():
    identity = plain_identity(iris=MAGENTA, skin=(200, 160, 130))
    neutral = render(identity, Pose(), Expression(), SIZE).astype(int)
    eye_row = (synthetic_camera._Camera(Pose(), SIZE).head(np.array([[0.0, identity.eye_height, -identity.head_depth]]))
               / synthetic_camera._SHIFT_SCALE)[0, 1]

    def changed_rows(expression):
        diff = np.abs(render(identity, Pose(), expression, SIZE).astype(int) - neutral).max(axis=-1) > 20
        assert diff.sum() > 10
        return np.nonzero(diff)[0]

    assert changed_rows(Expression(smile=1.0)).min() > eye_row + 8, "a smile changes the mouth, below the eyes"
    assert changed_rows(Expression(brow_raise=1.0)).max() < eye_row, "raised brows change only what is above the eyes"
    left = centroid(colour_mask(render(identity, Pose(), Expression(gaze_x=-1.0), SIZE), MAGENTA))[0]
    right = centroid(colour_mask(render(identity, Pose(), Expression(gaze_x=1.0), SIZE), MAGENTA))[0]
    assert right - left > 1.5, "positive gaze_x looks toward image right"
