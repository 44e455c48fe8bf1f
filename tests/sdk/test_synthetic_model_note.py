"""A model trained only on synthetic heads says so, once, when it animates a user's photo."""
from __future__ import annotations

import json

import cv2
import pytest

from megaportraits import cli
from megaportraits.manifest import load_manifest
from drawn_faces import draw_face


def _with_provenance(bundle_copy, toy_bundle, provenance):
    bundle = bundle_copy(toy_bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["provenance"] = provenance
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("provenance, synthetic", [
    ({"data": {"kind": "synthetic", "train_identities": 5000}}, True),
    ({"data": {"kind": "video", "root": "voxceleb2"}}, False),
    ({"weights": "hand-made"}, False),
    ({"data": "synthetic"}, False),     # not the training config's record: nothing is claimed
])
def test_the_note_follows_the_manifests_training_data(provenance, synthetic, bundle_copy, toy_bundle, tmp_path, capsys):
    bundle = _with_provenance(bundle_copy, toy_bundle, provenance)
    assert load_manifest(bundle).trained_on_synthetic_data is synthetic
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(draw_face(size=128), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.png"
    code = cli.main(["animate", str(face), str(face), "-o", str(out), "--bundle", str(bundle), "--provider", "cpu",
                     "--threads", "1", "--no-crop"])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if "trained only on synthetic" in line]
    assert len(notes) == (1 if synthetic else 0), err
    if synthetic:
        assert notes[0] == f"megaportraits: {cli.SYNTHETIC_MODEL_NOTE}"
        assert "convert" in notes[0] and "real talking-head video" in notes[0]
