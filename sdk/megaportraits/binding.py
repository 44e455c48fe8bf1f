"""One stream's frames through ONNX Runtime's IOBinding: the avatar stays on the device.

Per frame the Animator runs the driver graph, composes the motion on the host (relative motion,
smoothing: a few dozen floats), runs the generator, and the enhancer when the bundle has one.
On a GPU a plain ``session.run`` would upload the avatar's canonical volume (25 MB at paper512)
for every frame and bring every intermediate image back to the host. :class:`BoundFrames` binds
instead, once per stream:

* the avatar's volume and descriptor (and its other generator inputs, the source crop, pose and
  expression, where the generator reads them): OrtValues placed on the device once per avatar
  (:func:`device_state`), bound to the generator once;
* the driver frame: one device buffer, rewritten in place per frame (the frame's one upload);
* the generator's image (and matte) feed the enhancer as device OrtValues: the frame leaves the
  device once, as the last graph's output;
* pose and expression come to the host and go back (they are what the host composes).

The same code runs on the CPU provider, where the "device" is host memory: the bound and the
plain runs then compute bit-equal frames (tests/sdk/test_binding.py), which is how this path is
tested on machines without a GPU.

Outputs are checked against the manifest as in a plain run (:func:`megaportraits.animator.check_outputs`):
those that reach the host fully; those that stay on the device (the generator's image when the
enhancer reads it) by shape and dtype, their values being checked where they arrive, in the
enhancer's output.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .errors import MegaportraitsError
from .schema import BASE_IMAGE, BASE_MATTE, ENHANCER, IMAGE_OUTPUT, MATTE_OUTPUT

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def device_state(volume: np.ndarray, descriptor: np.ndarray, device: str, generator_inputs: dict | None = None) -> dict:
    """The avatar's generator inputs as OrtValues on ``device`` ("cpu" or "cuda"), made once: the
    volume, the descriptor and any others its bundle's generator reads from the avatar
    (``generator_inputs``, :attr:`megaportraits.animator.Avatar.generator_inputs`)."""
    arrays = {"canonical_volume": volume, "global_descriptor": descriptor, **(generator_inputs or {})}
    return {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
            for name, array in arrays.items()}


class BoundFrames:
    """IOBindings of one stream: driver, generator and (optionally) enhancer sessions, with the
    avatar's state bound once. Not thread-safe: one per :class:`~megaportraits.animator.Performance`."""

    def __init__(self, sessions: dict, device: str, state: dict, driver_input: np.ndarray,
                 specs: dict, enhance: bool = False):
        """``sessions``: role -> InferenceSession (driver, generator, and enhancer when
        ``enhance``); ``state``: :func:`device_state`; ``driver_input``: the host buffer the
        driver crop is written into, shape and dtype of the driver graph's input; ``specs``:
        role -> output name -> manifest TensorSpec."""
        self.device = device
        self._sessions = sessions
        self._specs = specs
        self._enhance = enhance
        self._host_driver = driver_input
        self._driver = sessions["driver"].io_binding()
        if device == "cpu":  # host memory is the device: the OrtValue shares the buffer, no copy at all
            self._driver_value = ort.OrtValue.ortvalue_from_numpy(driver_input, device, 0)
        else:
            self._driver_value = ort.OrtValue.ortvalue_from_shape_and_type(
                driver_input.shape, driver_input.dtype, device, 0)
        self._driver.bind_ortvalue_input("driver_image", self._driver_value)
        self._generator = sessions["generator"].io_binding()
        for name, value in state.items():
            self._generator.bind_ortvalue_input(name, value)
        self._enhancer = sessions[ENHANCER].io_binding() if enhance else None
        #: the enhancer reads the generator's matte too (a matte model's enhancer), known once
        self._enhancer_takes_matte = enhance and BASE_MATTE in {i.name for i in sessions[ENHANCER].get_inputs()}

    # ---- per frame ------------------------------------------------------------------------
    def motion(self, names: list) -> list:
        """Run the driver graph on the current contents of the driver buffer -> host arrays."""
        if self.device != "cpu":
            self._driver_value.update_inplace(self._host_driver)  # the frame's one upload
        for name in names:
            self._driver.bind_output(name, "cpu")
        return self._host_outputs("driver", self._driver, names)

    def render(self, pose: np.ndarray, expression: np.ndarray, outputs: list, enhanced_outputs: list) -> list:
        """The generator (then the enhancer, when it runs) for one motion -> host arrays:
        the generator's ``outputs``, or the enhancer's ``enhanced_outputs``."""
        self._generator.bind_cpu_input("pose", np.ascontiguousarray(pose))
        self._generator.bind_cpu_input("expression", np.ascontiguousarray(expression))
        if self._enhancer is None:
            for name in outputs:
                self._generator.bind_output(name, "cpu")
            return self._host_outputs("generator", self._generator, outputs)
        for name in outputs:  # stays on the device: the enhancer reads it there
            self._generator.bind_output(name, self.device, 0)
        rendered = dict(zip(outputs, self._device_outputs("generator", self._generator, outputs)))
        self._enhancer.bind_ortvalue_input(BASE_IMAGE, rendered[IMAGE_OUTPUT])
        if self._enhancer_takes_matte:
            self._enhancer.bind_ortvalue_input(BASE_MATTE, rendered[MATTE_OUTPUT])
        for name in enhanced_outputs:
            self._enhancer.bind_output(name, "cpu")
        return self._host_outputs(ENHANCER, self._enhancer, enhanced_outputs)

    # ---- running and checking -------------------------------------------------------------
    def _run(self, role: str, binding) -> list:
        from .animator import _graph_failed

        try:
            self._sessions[role].run_with_iobinding(binding)
        except Exception as e:
            raise _graph_failed(role, e) from None
        return binding.get_outputs()  # in the order the outputs were bound

    def _host_outputs(self, role: str, binding, names: list) -> list:
        from .animator import check_outputs

        values = [value.numpy() for value in self._run(role, binding)]
        return check_outputs(role, names, values, self._specs[role])

    def _device_outputs(self, role: str, binding, names: list) -> list:
        values = self._run(role, binding)
        for name, value in zip(names, values):
            spec = self._specs[role].get(name)
            if spec is None:
                continue
            shape = tuple(value.shape())
            expected = tuple(1 if d == "batch" else d for d in spec.shape)
            dtype = _ORT_DTYPES.get(value.data_type())
            if len(shape) != len(expected) or any(isinstance(e, int) and e != s for e, s in zip(expected, shape)):
                raise MegaportraitsError(f"the {role!r} graph's output {name!r} has shape {shape}, the manifest says "
                                         f"{expected}; the bundle is broken or was exported for another SDK")
            if dtype is not None and np.dtype(dtype) != np.dtype(spec.dtype):
                raise MegaportraitsError(f"the {role!r} graph's output {name!r} is {np.dtype(dtype)}, the manifest "
                                         f"says {spec.dtype}; the bundle is broken")
        return values
