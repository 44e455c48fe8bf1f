"""LivePortrait's motion composition in the SDK against values derived by hand."""
import math

import numpy as np
import pytest

from megaportraits import motion_liveportrait as mlp
from megaportraits.schema import LIVEPORTRAIT_MOTION


def logits_at(*bins, n_bins=66):
    """Logits whose softmax is (numerically) one-hot at each given bin."""
    out = np.full((len(bins), n_bins), -1e4)
    out[np.arange(len(bins)), bins] = 0.0
    return out


def motion(rotation=None, expression=None, scale=1.0, translation=(0, 0, 0), canonical=None, k=21, seed=0):
    rng = np.random.default_rng(seed)
    return mlp.KeypointMotion(
        rotation=np.eye(3)[None] if rotation is None else np.asarray(rotation, float)[None],
        expression=rng.normal(0, 0.05, (1, k, 3)) if expression is None else np.asarray(expression, float)[None],
        scale=np.array([[scale]], float), translation=np.array([translation], float),
        canonical=rng.uniform(-0.5, 0.5, (1, k, 3)) if canonical is None else np.asarray(canonical, float)[None])


def test_angles_from_bins():
    # bin b is b * 3 - 97.5 degrees
    np.testing.assert_allclose(mlp.bins_to_degrees(logits_at(0, 32, 65)), [-97.5, -1.5, 97.5], atol=1e-9)
    # uniform logits: the expected bin is 32.5, i.e. 0 degrees
    np.testing.assert_allclose(mlp.bins_to_degrees(np.zeros((1, 66))), [0.0], atol=1e-9)
    # two equal bins 10 and 20: the mean bin 15 -> -52.5 degrees
    two = np.full((1, 66), -1e4)
    two[0, [10, 20]] = 3.0
    np.testing.assert_allclose(mlp.bins_to_degrees(two), [-52.5], atol=1e-9)


def test_rotation_matrices_by_hand():
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    # yaw alone: R_y(30)^T = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    np.testing.assert_allclose(mlp.rotation_matrix([0.0], [30.0], [0.0])[0],
                               [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-12)
    # pitch alone: R_x(30)^T = [[1, 0, 0], [0, c, s], [0, -s, c]]
    np.testing.assert_allclose(mlp.rotation_matrix([30.0], [0.0], [0.0])[0],
                               [[1, 0, 0], [0, c, s], [0, -s, c]], atol=1e-12)
    # roll alone: R_z(30)^T = [[c, s, 0], [-s, c, 0], [0, 0, 1]]
    np.testing.assert_allclose(mlp.rotation_matrix([0.0], [0.0], [30.0])[0],
                               [[c, s, 0], [-s, c, 0], [0, 0, 1]], atol=1e-12)
    # pitch 90 then yaw 90: (R_y(90) R_x(90))^T with R_y(90) = [[0,0,1],[0,1,0],[-1,0,0]],
    # R_x(90) = [[1,0,0],[0,0,-1],[0,1,0]]: the product is [[0,1,0],[0,0,-1],[-1,0,0]]
    np.testing.assert_allclose(mlp.rotation_matrix([90.0], [90.0], [0.0])[0],
                               [[0, 0, -1], [1, 0, 0], [0, -1, 0]], atol=1e-12)


def test_keypoints_by_hand():
    # x = s (x_c R + delta) + (t_x, t_y, 0): 2 * ((1,0,0) I + (0,1,0)) + (1,2,0) = (3,4,0);
    # with yaw 90 (R_y(90)^T maps (1,0,0) to (0,0,-1)): 2 * ((0,0,-1) + (0,1,0)) + (1,2,0) = (1,4,-2)
    canonical, delta = np.array([[[1.0, 0, 0]]]), np.array([[[0.0, 1, 0]]])
    scale, t = np.array([[2.0]]), np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(mlp.keypoints(canonical, np.eye(3)[None], delta, scale, t), [[[3, 4, 0]]])
    yaw90 = mlp.rotation_matrix([0.0], [90.0], [0.0])
    np.testing.assert_allclose(mlp.keypoints(canonical, yaw90, delta, scale, t), [[[1, 4, -2]]], atol=1e-6)
    assert mlp.keypoints(canonical, yaw90, delta, scale, t).dtype == np.float32


def test_decode_takes_the_graph_outputs_in_schema_order():
    k = 21
    rng = np.random.default_rng(1)
    outputs = [logits_at(42), logits_at(22), logits_at(32), np.array([[0.1, -0.2, 0.3]]),
               rng.normal(size=(1, k, 3)), np.array([[1.5]]), rng.normal(size=(1, k, 3))]
    m = mlp.decode(outputs)
    for a, b in zip(m, mlp.decode(dict(zip(LIVEPORTRAIT_MOTION, outputs)))):
        np.testing.assert_array_equal(a, b)
    # pitch bin 42 -> 28.5, yaw bin 22 -> -31.5, roll bin 32 -> -1.5 degrees
    np.testing.assert_allclose(m.rotation, mlp.rotation_matrix([28.5], [-31.5], [-1.5]), atol=1e-9)
    np.testing.assert_allclose(m.expression, outputs[4])
    np.testing.assert_allclose(m.canonical, outputs[6])
    assert m.scale.shape == (1, 1) and m.translation.shape == (1, 3)


def test_relative_motion_reproduces_the_source_while_the_driver_keeps_still():
    source = motion(rotation=mlp.rotation_matrix([10.0], [-20.0], [5.0])[0], scale=1.3, translation=(0.1, -0.2, 0.4))
    first = motion(rotation=mlp.rotation_matrix([-5.0], [15.0], [0.0])[0], scale=0.8, translation=(0.3, 0.1, -0.5),
                   seed=2)
    relative = mlp.RelativeKeypoints(source, first)
    np.testing.assert_allclose(relative(first), mlp.own_keypoints(source), atol=1e-6)


def test_relative_motion_by_hand():
    # Source: identity pose, scale 1, t = (0.1, 0.2, 0.9), delta 0, one keypoint (1, 0, 0).
    # Driver first frame: identity, scale 2, t = (0, 0, 0), delta 0.
    # Driver now: yaw 90, scale 3, t = (0.5, -0.5, 7), delta (0, 0.25, 0).
    # Relative: R = R_d R_d0^T R_s = R_y(90)^T; delta = 0 + (0, 0.25, 0); s = 1 * 3 / 2 = 1.5;
    # t = (0.1, 0.2) + (0.5, -0.5) = (0.6, -0.3), t_z = 0.
    # x = 1.5 * ((0, 0, -1) + (0, 0.25, 0)) + (0.6, -0.3, 0) = (0.6, 0.075, -1.5)
    source = motion(expression=[[0, 0, 0]], canonical=[[1, 0, 0]], translation=(0.1, 0.2, 0.9))
    first = motion(expression=[[0, 0, 0]], canonical=[[9, 9, 9]], scale=2.0)
    now = motion(rotation=mlp.rotation_matrix([0.0], [90.0], [0.0])[0], expression=[[0, 0.25, 0]],
                 canonical=[[9, 9, 9]], scale=3.0, translation=(0.5, -0.5, 7.0))
    np.testing.assert_allclose(mlp.RelativeKeypoints(source, first)(now), [[[0.6, 0.075, -1.5]]], atol=1e-6)


def test_relative_rotation_is_applied_on_top_of_the_source():
    # R = (R_d R_d0^T) R_s: with R_d0 = yaw 10, R_d = yaw 40 and R_s = pitch 20 the result is
    # R_y(30)^T R_x(20)^T... as matrices acting on row vectors: x_c R_d R_d0^T R_s.
    r = lambda p, y: mlp.rotation_matrix([p], [y], [0.0])[0]
    source = motion(rotation=r(20.0, 0.0), expression=np.zeros((21, 3)))
    first = motion(rotation=r(0.0, 10.0), expression=np.zeros((21, 3)), seed=3)
    now = motion(rotation=r(0.0, 40.0), expression=np.zeros((21, 3)), seed=4)
    expected = source.canonical[0] @ (r(0.0, 40.0) @ r(0.0, 10.0).T @ r(20.0, 0.0))
    np.testing.assert_allclose(mlp.RelativeKeypoints(source, first)(now)[0], expected, atol=1e-6)
    # yaw rotations compose: R_y(40)^T R_y(10) = R_y(30)^T
    np.testing.assert_allclose(r(0.0, 40.0) @ r(0.0, 10.0).T, r(0.0, 30.0), atol=1e-12)


def test_absolute_motion_copies_the_driver_expression_only_where_liveportrait_does():
    source = motion(expression=np.zeros((21, 3)), scale=1.7, translation=(0.1, 0.1, 0.1))
    driver = motion(rotation=mlp.rotation_matrix([0.0], [30.0], [0.0])[0], expression=np.ones((21, 3)),
                    scale=0.5, translation=(0.4, 0.3, 0.2), seed=5)
    got = mlp.absolute_keypoints(source, driver)
    expression = np.zeros((21, 3))
    for k in (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20):
        expression[k] = 1
    expression[3, 1] = expression[4, 1] = expression[5, 2] = expression[8, 2] = 1
    expression[9, 1:] = 1
    # source's scale and canonical keypoints, driver's rotation and (t_x, t_y)
    expected = 1.7 * (source.canonical[0] @ driver.rotation[0] + expression) + [0.4, 0.3, 0.0]
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    assert int((expression == 0).sum()) == 21 * 3 - 13 * 3 - 6  # 0, 7, 10 and parts of 3, 4, 5, 8, 9 stay the source's


def test_composer_modes_and_smoothing():
    source = motion()
    frames = [motion(rotation=mlp.rotation_matrix([0.0], [a], [0.0])[0], seed=10 + i) for i, a in enumerate((0, 20, -10))]
    composer = mlp.KeypointComposer(source, "relative")
    np.testing.assert_allclose(composer(frames[0]), mlp.own_keypoints(source), atol=1e-6)
    relative = mlp.RelativeKeypoints(source, frames[0])
    np.testing.assert_allclose(composer(frames[1]), relative(frames[1]), atol=1e-7)
    absolute = mlp.KeypointComposer(source, "absolute")
    np.testing.assert_allclose(absolute(frames[2]), mlp.absolute_keypoints(source, frames[2]))
    smooth = mlp.KeypointComposer(source, "relative", smooth=True, fps=25)
    first = smooth(frames[0])
    np.testing.assert_allclose(first, mlp.own_keypoints(source), atol=1e-6)  # the first frame passes
    jumped = smooth(frames[1])
    raw = relative(frames[1])
    # One-Euro moves part of the way towards the new value, not past it, not all of it
    towards = (jumped - first) / np.where(np.abs(raw - first) > 1e-6, raw - first, np.inf)
    moved = towards[np.isfinite(towards) & (np.abs(raw - first) > 1e-3)]
    assert moved.size and np.all((moved > 0) & (moved < 1))
    with pytest.raises(ValueError, match="motion must be one of"):
        mlp.KeypointComposer(source, "sideways")


# ---- the family switch in the manifest ---------------------------------------------------------
def _manifest_dict(family=None, motion=None, roles=None):
    from megaportraits.schema import FAMILY_GRAPH_IO

    io = FAMILY_GRAPH_IO.get(family, FAMILY_GRAPH_IO["megaportraits"])
    graphs = {role: {"file": f"{role}.onnx", "inputs": [{"name": n, "shape": ["batch"], "dtype": "float32"}
                                                         for n in spec.inputs],
                     "outputs": [{"name": n, "shape": ["batch"], "dtype": "float32"} for n in spec.outputs]}
              for role, spec in io.items()}
    model = {"name": "m", "preset": "p", "image_size": 256}
    if family is not None:
        model["family"] = family
    if motion is not None:
        model["motion"] = motion
    d = {"format_version": 1, "model": model, "graphs": graphs, "opset": 20,
         "files": {f"{r}.onnx": "0" * 64 for r in graphs}}
    if roles is not None:
        d["roles"] = roles
    return d


LP_ROLES = {"source": {"input_size": 256, "crop": {"scale": 2.3, "vx_ratio": 0.0, "vy_ratio": -0.125}},
            "driver": {"input_size": 256, "crop": {"scale": 2.2, "vy_ratio": -0.1}},
            "generator": {"output_size": 512}}


def test_manifest_names_the_family_and_its_motion():
    from megaportraits import manifest as mf
    from megaportraits.schema import LIVEPORTRAIT_GRAPH_IO, MEGAPORTRAITS

    old = mf.Manifest.from_dict(_manifest_dict())
    assert old.family == MEGAPORTRAITS and old.output_size("generator") == 256 and old.crop("source") is None
    lp = mf.Manifest.from_dict(_manifest_dict("liveportrait", roles=LP_ROLES))
    assert lp.family == "liveportrait" and lp.graph_io == LIVEPORTRAIT_GRAPH_IO
    assert (lp.input_size("source"), lp.output_size("generator"), lp.output_size("source")) == (256, 512, 256)
    assert lp.crop("source") == mf.CropSpec(2.3, 0.0, -0.125) and lp.crop("driver").vy_ratio == -0.1
    again = mf.Manifest.from_dict(lp.to_dict())  # round trip through JSON's form
    assert again.to_dict() == lp.to_dict()
    assert lp.to_dict()["model"]["motion"] == "implicit_keypoints"


@pytest.mark.parametrize("change, message", [
    (dict(family="emoportraits"), "model.family"),
    (dict(family="liveportrait", motion="pose_expression"), "model.motion"),
    (dict(family="liveportrait", roles={"enhancer": {"output_size": 512}}), "roles"),
    (dict(family="liveportrait", roles={"source": {"crop": {"scale": -1}}}), "roles.source.crop.scale"),
    (dict(family="liveportrait", roles={"source": {"crop": {"vy_ratio": 0.1}}}), "roles.source.crop"),
    (dict(family="liveportrait", roles={"generator": {"output_size": 3}}), "roles.generator.output_size"),
])
def test_manifest_refuses_a_wrong_family_switch(change, message):
    from megaportraits import manifest as mf
    from megaportraits.errors import BundleError

    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        mf.Manifest.from_dict(_manifest_dict(**change))


def test_the_sdk_checks_graph_names_against_the_bundle_family():
    from megaportraits import bundle
    from megaportraits import manifest as mf

    lp = mf.Manifest.from_dict(_manifest_dict("liveportrait", roles=LP_ROLES))
    assert bundle.contract_problems(lp) == []
    # LivePortrait's graphs in a manifest that says (by default) megaportraits: refused, named
    d = _manifest_dict("liveportrait")
    del d["model"]["family"]
    problems = bundle.contract_problems(mf.Manifest.from_dict(d))
    assert problems and "'source' graph" in problems[0] and "incompatible" in problems[0]
