"""megaportraits.sessions: the options every session gets, one-line errors, and which of a
bundle's graph flavours runs here (the portable fallback)."""
from __future__ import annotations

from types import SimpleNamespace

import onnxruntime as ort
import pytest

from megaportraits import sessions
from megaportraits.errors import BundleError, CustomOpError, MegaportraitsError
from megaportraits.schema import GRID_SAMPLE_3D


def test_options_are_the_sdks(tmp_path):
    options = sessions.session_options(3)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_profiling
    profiled = sessions.session_options(1, profile_prefix=str(tmp_path / "p"))
    assert profiled.enable_profiling and profiled.profile_file_prefix == str(tmp_path / "p")


@pytest.mark.parametrize("threads", [-1, 1.5, True, "2", None])
def test_bad_thread_counts_are_refused_in_one_line(threads):
    with pytest.raises(MegaportraitsError, match=r"threads must be a whole number >= 0") as caught:
        sessions.session_options(threads)
    assert "\n" not in str(caught.value)


def test_a_library_that_will_not_load_is_one_custom_op_error(tmp_path):
    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"not an ELF file")
    with pytest.raises(CustomOpError, match=rf"loading {broken} failed: ") as caught:
        sessions.session_options(1, str(broken))
    assert "\n" not in str(caught.value)


def test_onnx_runtime_refusing_a_model_is_one_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="ONNX Runtime cannot load the model: ") as caught:
        sessions.create_session(b"\x08\x01garbage", ["CPUExecutionProvider"])
    assert "\n" not in str(caught.value)
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x01garbage")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load 'broken.onnx': "):
        sessions.create_session(path, ["CPUExecutionProvider"])


def _manifest(custom_op, portable: bool):
    return SimpleNamespace(custom_op=custom_op, has_portable=portable or custom_op is None)


CUSTOM = {"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version}


@pytest.mark.parametrize("custom_op, has_portable, requested, available, expected", [
    (None, True, False, True, (True, None, None, None)),                    # portable-only bundle
    (CUSTOM, True, False, True, (False, "/lib.so", None, None)),             # the library runs it
    (CUSTOM, True, False, False, (True, None, "not built", None)),           # fallback to the twins
    (CUSTOM, False, False, False, (True, None, None, "needs the custom-op library")),
    (CUSTOM, True, True, True, (True, None, None, None)),                    # portable requested
    (CUSTOM, False, True, True, (True, None, None, "portable graphs were requested")),
    ({"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version + 1}, True, False, True,
     (True, None, "which this SDK does not provide", None)),                # a newer op than ours
    ({"domain": "org.other", "version": 1}, True, False, True, (True, None, "org.other v1", None)),
])
def test_choose_flavour(monkeypatch, custom_op, has_portable, requested, available, expected):
    status = sessions.CustomOpStatus(True, path="/lib.so") if available else \
        sessions.CustomOpStatus(False, reason="the library was not built")
    monkeypatch.setattr(sessions, "custom_op_status", lambda: status)
    flavour = sessions.choose_flavour(_manifest(custom_op, has_portable), portable=requested)
    portable, library, reason, problem = expected
    assert (flavour.portable, flavour.library) == (portable, library)
    assert (flavour.fallback_reason is None) == (reason is None) and (reason or "") in (flavour.fallback_reason or "")
    assert (flavour.problem is None) == (problem is None) and (problem or "") in (flavour.problem or "")


def test_custom_op_status_never_raises_and_says_why(monkeypatch):
    from megaportraits import _native

    monkeypatch.setattr(_native, "LIBRARY_NAME", "libnot_built.so")
    status = sessions.custom_op_status()
    assert not status.available and "libnot_built.so does not exist" in status.reason and status.path is None
    with pytest.raises(CustomOpError, match="the custom-op library cannot be used: .*libnot_built.so"):
        sessions.require_custom_op_library()
