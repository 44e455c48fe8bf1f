// pybind11 front end of GridSample3D: direct calls on numpy arrays, same kernel as the ONNX
// Runtime op. The warp runs with the GIL released on a std::thread parallel-for.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <new>
#include <string>
#include <vector>

#include "grid_sample_3d.h"
#include "parallel_for.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// Refuse anything but float32 with a message that says how to fix it (no silent casts: a
// float64 volume would double the memory traffic the caller thinks it pays).
FloatArray as_float32(const py::array& array, const char* name) {
  if (!array.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(std::string("grid_sample_3d: ") + name + " must be float32, got " +
                         py::str(array.dtype()).cast<std::string>() + "; convert it with .astype(numpy.float32)");
  }
  return FloatArray::ensure(array);
}

std::vector<int64_t> shape_of(const py::array& array) {
  return std::vector<int64_t>(array.shape(), array.shape() + array.ndim());
}

py::array_t<float> grid_sample_3d(const py::array& x,
                                  const py::array& grid,
                                  const std::string& mode,
                                  const std::string& padding_mode,
                                  int64_t align_corners,
                                  size_t num_threads) {
  megaportraits::GridSampleOptions options;
  options.interpolation = megaportraits::parse_interpolation(mode);
  options.padding = megaportraits::parse_padding(padding_mode);
  options.align_corners = megaportraits::parse_align_corners(align_corners);

  const FloatArray volume = as_float32(x, "x");
  const FloatArray coordinates = as_float32(grid, "grid");
  const std::vector<int64_t> x_shape = shape_of(volume);
  const std::vector<int64_t> grid_shape = shape_of(coordinates);
  megaportraits::check_shapes(x_shape.data(), x_shape.size(), grid_shape.data(), grid_shape.size());

  std::vector<int64_t> y_shape(5);
  megaportraits::output_shape(x_shape.data(), grid_shape.data(), y_shape.data());
  py::array_t<float> y(y_shape);

  const megaportraits::GridSample3DProblem problem(volume.data(), x_shape.data(), coordinates.data(),
                                                   grid_shape.data(), y.mutable_data(), options);
  {
    py::gil_scoped_release release;
    for (const auto phase : megaportraits::GridSample3DProblem::kPhases) {
      megaportraits::parallel_for(problem.task_count(phase), num_threads,
                                  [&](size_t task) { problem.run_task(phase, task); });
    }
  }
  if (problem.out_of_memory()) throw std::bad_alloc();  // pybind11: MemoryError
  return y;
}

}  // namespace

PYBIND11_MODULE(_grid_sample_3d, m) {
  m.doc() = "GridSample3D (ONNX GridSample-20 on 5-D input) on numpy arrays; same kernel as the ONNX Runtime op.";
  m.def("grid_sample_3d", &grid_sample_3d, py::arg("x"), py::arg("grid"), py::arg("mode") = "linear",
        py::arg("padding_mode") = "zeros", py::arg("align_corners") = 0, py::arg("num_threads") = 0,
        "Sample x (N, C, D, H, W) at grid (N, D', H', W', 3) -> (N, C, D', H', W'); float32 only.\n"
        "num_threads=0 uses all hardware threads.");
}
