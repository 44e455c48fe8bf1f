"""The student graph equals the PyTorch student in ONNX Runtime (dynamic batch), and the student
bundle's manifest lists its avatars and its teacher."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from megaportraits import manifest as mf
from megaportraits.bundle import validate_bundle
from megaportraits.schema import AVATAR_INDEX, DRIVER_IMAGE, IMAGE_OUTPUT, MATTE_OUTPUT, STUDENT
from megaportraits_export.distill.graph import StudentAvatar, export_student_graph, write_student_bundle
from megaportraits_export.networks.student import StudentGraph, build_student
from megaportraits_export.onnx_export.verify import IMAGE_ATOL
from megaportraits_export.student_config import get_student_config


def _student(matte: bool, avatars: int = 3, full_tables_up_to: int = 128):
    torch.manual_seed(1)
    student = build_student(get_student_config("tiny").replace(num_avatars=avatars, matte=matte,
                                                               full_tables_up_to=full_tables_up_to)).eval()
    with torch.no_grad():  # avatars that differ and BatchNorm statistics away from (0, 1), as after training
        for tensors in student.avatar_parameters():
            tensors.normal_(0, 0.3)
        for norm in student.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.normal_(0, 0.5)
                norm.running_var.uniform_(0.3, 3.0)
    return student


@pytest.mark.parametrize("matte,full_tables_up_to", [(False, 128), (True, 128), (True, 8)])
def test_student_graph_equals_pytorch_at_several_batch_sizes(tmp_path, matte, full_tables_up_to, one_torch_thread):
    """(8: the tiny student's blocks above 8 px keep capped tables, upsampled in the graph, as paper512's.)"""
    student = _student(matte, full_tables_up_to=full_tables_up_to)
    path = tmp_path / "student.onnx"
    inputs, outputs = export_student_graph(student, path)
    assert [t.name for t in inputs] == [DRIVER_IMAGE, AVATAR_INDEX]
    assert inputs[1].dtype == "int64" and inputs[1].shape == ("batch",)
    assert [t.name for t in outputs] == [IMAGE_OUTPUT] + ([MATTE_OUTPUT] if matte else [])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch in (1, 3, 5):
        image = rng.random((batch, 3, 64, 64), dtype=np.float32)
        index = rng.integers(0, 3, batch).astype(np.int64)
        got = session.run(None, {DRIVER_IMAGE: image, AVATAR_INDEX: index})
        with torch.no_grad():
            want = StudentGraph(student)(torch.from_numpy(image), torch.from_numpy(index))
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=IMAGE_ATOL, rtol=0)  # the exporter's bound
    # the graph really depends on the avatar index
    image = rng.random((2, 3, 64, 64), dtype=np.float32)
    a = session.run(None, {DRIVER_IMAGE: image, AVATAR_INDEX: np.array([0, 1], dtype=np.int64)})[0]
    b = session.run(None, {DRIVER_IMAGE: image, AVATAR_INDEX: np.array([2, 1], dtype=np.int64)})[0]
    assert np.abs(a[0] - b[0]).max() > 1e-3 and np.array_equal(a[1], b[1])


def test_student_bundle_lists_avatars_and_teacher(tmp_path, bundle_factory, one_torch_thread):
    teacher = bundle_factory("tiny")
    student = _student(matte=True, avatars=2)
    rng = np.random.default_rng(0)
    avatars = [StudentAvatar("ann", rng.integers(0, 255, (90, 80, 3), dtype=np.uint8), (5, 10, 70),
                             backdrop=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
               StudentAvatar("bob", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (0, 0, 64),
                             backdrop=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))]
    out = write_student_bundle(student, avatars, teacher, tmp_path / "student")
    manifest = mf.load_manifest(out)
    assert manifest.is_student and manifest.has_matte and manifest.avatar_names() == ["ann", "bob"]
    assert manifest.student["teacher"]["manifest_sha256"] == mf.sha256_file(teacher / mf.MANIFEST_NAME)
    first = manifest.student["avatars"][0]
    assert first["crop"] == [5, 10, 70] and first["image"] in manifest.files and first["backdrop"] in manifest.files
    mf.verify_files(out, manifest)
    import cv2
    stored = cv2.cvtColor(cv2.imread(str(out / first["image"])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(stored, avatars[0].image)  # lossless
    assert set(manifest.graphs) == {STUDENT} and manifest.custom_op is None
    assert not list(tmp_path.glob(".student.partial-*"))


def test_manifest_refuses_a_student_without_its_section(tmp_path, bundle_factory, one_torch_thread):
    import json

    out = write_student_bundle(_student(matte=False, avatars=1),
                               [StudentAvatar("ann", np.zeros((64, 64, 3), np.uint8), (0, 0, 64))],
                               bundle_factory("tiny"), tmp_path / "student")
    data = json.loads((out / mf.MANIFEST_NAME).read_text())
    broken = dict(data)
    del broken["student"]
    with pytest.raises(mf.BundleError, match="needs a 'student' section"):
        mf.Manifest.from_dict(broken)
    twice = json.loads(json.dumps(data))
    twice["student"]["avatars"].append(dict(twice["student"]["avatars"][0]))
    with pytest.raises(mf.BundleError, match="two avatars are named 'ann'"):
        mf.Manifest.from_dict(twice)
    unhashed = json.loads(json.dumps(data))
    unhashed["student"]["avatars"][0]["image"] = "other.png"
    with pytest.raises(mf.BundleError, match="no sha256 entry"):
        mf.Manifest.from_dict(unhashed)
