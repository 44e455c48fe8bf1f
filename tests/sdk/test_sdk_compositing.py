"""Background compositing for matte models: the formula, the inpainted backdrop plate on drawn
sources, and the Animator/CLI on a random-weight ``tiny_matte`` bundle against the generator
session run by hand."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from megaportraits import Animator, AnimatorOptions, cli
from megaportraits.animator import to_image, to_tensor
from megaportraits.compositing import DILATION, INPAINT_RADIUS, background_plate, composite
from megaportraits.errors import MegaportraitsError

# ---- composite -----------------------------------------------------------------------------


def test_composite_is_the_formula_and_exact_at_the_ends(rng):
    image, plate = rng.random((2, 2, 3, 16, 16), dtype=np.float32)
    matte = rng.random((2, 1, 16, 16), dtype=np.float32)
    want = matte.astype(np.float64) * image + (1 - matte.astype(np.float64)) * plate
    got = composite(image, matte, plate)
    assert got.dtype == np.float32 and got.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.array_equal(composite(image, np.zeros_like(matte), plate), plate)
    assert np.array_equal(composite(image, np.ones_like(matte), plate), image)


def test_composite_broadcasts_one_plate_and_writes_into_out(rng):
    image = rng.random((3, 3, 8, 8), dtype=np.float32)
    matte = rng.random((3, 1, 8, 8), dtype=np.float32)
    plate = rng.random((3, 8, 8), dtype=np.float32)
    out = np.empty_like(image)
    assert composite(image, matte, plate, out=out) is out
    np.testing.assert_allclose(out, matte * image + (1 - matte) * plate[None], atol=1e-6, rtol=0)


def test_composite_names_the_layout_it_needs(rng):
    image = rng.random((8, 8, 3), dtype=np.float32)  # channels-last: not this module's layout
    with pytest.raises(ValueError, match=r"image \(\.\.\., 3, S, S\)"):
        composite(image, rng.random((8, 8, 1), dtype=np.float32), image)
    with pytest.raises(ValueError, match="source must be a channel-first square image"):
        background_plate(image, rng.random((8, 8), dtype=np.float32))


# ---- background_plate ------------------------------------------------------------------------
S = 128
PERSON = np.array([0.95, 0.05, 0.9], np.float32)  # far from every backdrop colour below


def drawn_source(backdrop: np.ndarray):
    """A disc "person" over ``backdrop`` (3, S, S). The matte is the disc with a 1-px soft edge;
    outside it a 1-px halo of half person colour that the matte misses (as real mattes miss
    stray hair), which only the cut-out's dilation removes. -> source, matte, distance to centre,
    disc radius."""
    y, x = np.mgrid[:S, :S] + 0.5
    r = np.hypot(x - 0.5 * S, y - 0.55 * S)
    radius = 0.3 * S
    matte = np.clip(radius + 1 - r, 0, 1).astype(np.float32)[None]
    halo = ((r >= radius + 1) & (r < radius + 2)).astype(np.float32)[None] * 0.5
    colour = np.maximum(matte, halo)
    source = (colour * PERSON[:, None, None] + (1 - colour) * backdrop).astype(np.float32)
    return source, matte, r, radius


def test_plate_of_a_constant_backdrop_is_that_backdrop(rng):
    backdrop = np.broadcast_to(rng.uniform(0.1, 0.6, (3, 1, 1)), (3, S, S)).astype(np.float32)
    source, matte, r, radius = drawn_source(backdrop)
    plate = background_plate(source, matte)
    assert plate.dtype == np.float32 and plate.shape == (3, S, S)
    far = r > radius + 1 + S * DILATION + 1  # beyond the dilated cut-out: untouched
    assert np.array_equal(plate[:, far], source[:, far])
    # Telea fills with weighted averages of the (here all equal) known pixels; OpenCV adds a
    # term of at most sqrt(2) units of the 16-bit scale the plate is inpainted at (2e-5), which
    # may build up over a few rings of the fill: 1e-4 (a 40th of an 8-bit level) bounds it
    np.testing.assert_allclose(plate, backdrop, atol=1e-4, rtol=0)


def test_plate_of_a_smooth_backdrop_has_no_trace_of_the_person(rng):
    backdrop = cv2.resize(rng.uniform(0.1, 0.6, (3, 3, 3)).astype(np.float32), (S, S),
                          interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1).copy()
    source, matte, r, radius = drawn_source(backdrop)
    plate = background_plate(source, matte)
    grow, reach = round(S * DILATION), round(S * INPAINT_RADIUS)
    far = r > radius + 1 + grow + 1
    assert np.array_equal(plate[:, far], source[:, far])
    # Inside the cut-out (disc and halo) inpainting can only interpolate what lies around it:
    # Telea's values are weighted averages of known pixels within `reach` of the cut's edge, each
    # extrapolated along its gradient by at most `reach` px. So every filled value lies within
    # the backdrop's range on that band, widened by (steepest backdrop slope x reach) + 1e-4
    # (OpenCV's extra term, see above); the person's colour is far outside that range.
    person = r < radius + 2
    band = (r >= radius + grow - 1) & (r < radius + 1 + grow + reach + 2)
    gy, gx = np.gradient(backdrop, axis=(1, 2))
    slack = np.hypot(gx, gy).max() * reach + 1e-4
    low, high = backdrop[:, band].min(1) - slack, backdrop[:, band].max(1) + slack
    assert (PERSON < low).any() or (PERSON > high).any()  # the check below can see the person
    filled = plate[:, person]
    assert (filled >= low[:, None]).all() and (filled <= high[:, None]).all()


def test_plate_without_a_person_is_the_source(rng):
    source = rng.random((3, S, S), dtype=np.float32)
    matte = np.full((1, S, S), 0.04, np.float32)  # below the threshold everywhere
    assert np.array_equal(background_plate(source, matte), source)


# ---- the Animator and the CLI on a matte bundle ------------------------------------------------
@pytest.fixture(scope="module")
def matte_bundle(bundle_factory):
    return bundle_factory("tiny_matte")


def animator(bundle, **options) -> Animator:
    return Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, motion="absolute", **options)


def tensor(image: np.ndarray) -> np.ndarray:
    return to_tensor(image)  # the SDK's conversion, bit for bit (x * (1/255) is not always x / 255)


def by_hand(a: Animator, source: np.ndarray, driver: np.ndarray):
    """The graphs run directly on the bundle's sessions: source matte and plate, the driven
    image and matte."""
    sessions = a.bundle.sessions
    volume, descriptor, pose_s, z_s = sessions["source"].run(None, {"source_image": tensor(source)})
    pose_d, z_d = sessions["driver"].run(["pose", "expression"], {"driver_image": tensor(driver)})

    def generate(pose, z):
        return sessions["generator"].run(["image", "matte"], {"canonical_volume": volume, "global_descriptor": descriptor,
                                                            "pose": pose, "expression": z})
    _, source_matte = generate(pose_s, z_s)
    image, matte = generate(pose_d, z_d)
    return background_plate(tensor(source)[0], source_matte[0]), image, matte


def images(rng, size, n):
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("io_binding", [False, True])
def test_source_background_composites_onto_the_avatars_plate(matte_bundle, rng, io_binding):
    a = animator(matte_bundle, io_binding=io_binding)
    assert a.has_matte and a.composites
    source, driver = images(rng, a.image_size, 2)
    avatar = a.prepare(source)
    plate, image, matte = by_hand(a, source, driver)
    assert avatar.backdrop is not None and avatar.backdrop.shape == (3, a.image_size, a.image_size)
    np.testing.assert_allclose(avatar.backdrop, plate, atol=1e-6, rtol=0)
    assert 0 < matte.min() and matte.max() < 1  # a random model: the frame really mixes both
    want = to_image(matte.astype(np.float64) * image + (1 - matte.astype(np.float64)) * plate)
    got = a.animate_frame(avatar, driver)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - to_image(image).astype(int)).max() > 10


def test_generated_background_is_the_generators_image(matte_bundle, rng):
    a = animator(matte_bundle, background="generated")
    assert a.has_matte and not a.composites
    source, driver = images(rng, a.image_size, 2)
    avatar = a.prepare(source)
    assert avatar.backdrop is None
    _, image, _ = by_hand(a, source, driver)
    assert np.array_equal(a.animate_frame(avatar, driver), to_image(image))


def test_a_bundle_without_matte_ignores_the_option(toy_bundle, rng):
    outputs = []  # the toy bundle (tests/sdk/toy_bundle.py): real graphs, no matte, no export to wait for
    for background in ("source", "generated"):
        a = animator(toy_bundle, background=background)
        assert not a.has_matte and not a.composites
        source, driver = images(np.random.default_rng(1), a.image_size, 2)
        avatar = a.prepare(source)
        assert avatar.backdrop is None
        outputs.append(a.animate_frame(avatar, driver))
    assert np.array_equal(*outputs)


def test_an_avatar_without_plate_cannot_be_composited(matte_bundle, rng):
    avatar = animator(matte_bundle, background="generated").prepare(images(rng, 64, 1)[0])
    with pytest.raises(MegaportraitsError, match="no backdrop to composite onto"):
        animator(matte_bundle).performance(avatar)


def test_bad_background_is_one_line(tmp_path):
    with pytest.raises(MegaportraitsError) as info:
        AnimatorOptions(background="bogus").validate()
    assert str(info.value) == "background must be one of source, generated, not 'bogus'"
    with pytest.raises(MegaportraitsError, match="background must be one of"):  # before opening anything
        Animator(tmp_path / "no_bundle", provider="cpu", background="green")


def test_cli_background_option(matte_bundle, rng, tmp_path, capsys):
    source, driver = images(rng, 64, 2)
    for name, image in (("source.png", source), ("driver.png", driver)):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for background in ("source", "generated"):
        out = tmp_path / f"out_{background}.png"
        code = cli.main(["animate", str(tmp_path / "source.png"), str(tmp_path / "driver.png"), "-o", str(out),
                         "--bundle", str(matte_bundle), "--provider", "cpu", "--threads", "1", "--no-crop", "--no-paste-back",
                         "--background", background])
        assert code == 0, capsys.readouterr().err
        a = animator(matte_bundle, background=background)
        want = a.animate_frame(a.prepare(source), driver)
        assert np.array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), want)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["animate", str(tmp_path / "source.png"), str(tmp_path / "driver.png"), "-o", str(tmp_path / "x.png"),
                  "--bundle", str(matte_bundle), "--background", "bogus"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("megaportraits: error:") and "--background" in err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
