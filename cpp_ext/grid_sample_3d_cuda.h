// GridSample3D on a CUDA device: the ONNX Runtime custom op's CUDA flavour (ort_custom_op.cc)
// calls this with device pointers and ONNX Runtime's compute stream. Built only with
// MEGAPORTRAITS_WITH_CUDA (setup.py finds nvcc and the CUDA headers); the maths per grid point
// is grid_sample_3d_core.h's, the same lines the CPU kernel runs.
#pragma once

#include <cstdint>
#include <string>

#include "grid_sample_3d_core.h"

namespace megaportraits {
namespace cuda {

// Y = GridSample3D(X, grid) for valid shapes (check_shapes passed): X (N, C, D, H, W) and Y
// (N, C, D', H', W') float32, or float16 when `half`; grid (N, D', H', W', 3) float32.
// Enqueued on `stream` (a cudaStream_t); returns "" or the CUDA error, as one line.
std::string grid_sample_3d(const void* x, const int64_t* x_shape, const float* grid, const int64_t* grid_shape,
                           void* y, const GridSampleOptions& options, bool half, void* stream);

}  // namespace cuda
}  // namespace megaportraits
