// GridSample3D: the volumetric warp of MegaPortraits, sampled on the CPU.
//
// One kernel, two front ends: the ONNX Runtime custom op (ort_custom_op.cc) and the pybind11
// module (python_bindings.cc). Both validate shapes with `check_shapes`, build a
// `GridSample3DProblem`, and hand its independent tasks to their own thread pool (ONNX
// Runtime's intra-op pool, or a std::thread parallel-for), so the numerics are identical.
//
// Semantics are those of ONNX GridSample-20 and torch.nn.functional.grid_sample on 5-D input:
// X (N, C, D, H, W), grid (N, D', H', W', 3) with (x, y, z) normalised to [-1, 1],
// Y (N, C, D', H', W'). Non-finite grid values follow torch's CPU kernel: with zero padding a
// NaN/inf coordinate samples nothing (0); with border or reflection padding +inf clamps to the
// last voxel, -inf to the first (border) or the last (reflection), NaN to the last voxel.
//
// Element types: X and Y float32, or X and Y IEEE half (float16, as raw uint16_t bits) with a
// float32 grid. The half path widens X while it makes the channels-last copy, samples in
// float32 and rounds each output once (to nearest even), so it equals the float32 result on
// the same (half-valued) X rounded to half. The per-point maths lives in grid_sample_3d_core.h,
// shared with the CUDA kernel.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "grid_sample_3d_core.h"

namespace megaportraits {

// Parse the ONNX attribute values; throw std::invalid_argument with the accepted values.
Interpolation parse_interpolation(const std::string& mode);
Padding parse_padding(const std::string& padding_mode);
bool parse_align_corners(int64_t align_corners);

// Throw std::invalid_argument naming the offending tensor unless X is (N, C, D, H, W) and grid
// is (N, D', H', W', 3) with the same N and a non-empty input volume where output is non-empty.
void check_shapes(const int64_t* x_shape, size_t x_rank, const int64_t* grid_shape, size_t grid_rank);

// Y's shape (N, C, D', H', W') for valid shapes.
void output_shape(const int64_t* x_shape, const int64_t* grid_shape, int64_t* y_shape);

// One warp, in two phases of independent tasks: kChannelsLast copies X to (N, D, H, W, C) (a
// scratch copy owned by the problem); kSample then computes, per tile of output voxels, each
// voxel's corners and weights once and blends the corner rows across all channels at once.
// Run every task of kChannelsLast before any of kSample; tasks within a phase may run on any
// thread in any order. The constructor throws std::bad_alloc when the scratch copy does not fit.
class GridSample3DProblem {
 public:
  enum class Phase { kChannelsLast, kSample };
  static constexpr Phase kPhases[] = {Phase::kChannelsLast, Phase::kSample};

  GridSample3DProblem(const float* x,
                      const int64_t* x_shape,
                      const float* grid,
                      const int64_t* grid_shape,
                      float* y,
                      const GridSampleOptions& options);
  // The float16 flavour: X and Y hold IEEE half bits; the grid stays float32.
  GridSample3DProblem(const uint16_t* x,
                      const int64_t* x_shape,
                      const float* grid,
                      const int64_t* grid_shape,
                      uint16_t* y,
                      const GridSampleOptions& options);
  ~GridSample3DProblem();
  GridSample3DProblem(const GridSample3DProblem&) = delete;
  GridSample3DProblem& operator=(const GridSample3DProblem&) = delete;

  size_t task_count(Phase phase) const;
  // Never throws (tasks run on foreign thread pools); check out_of_memory() after a phase.
  void run_task(Phase phase, size_t task) const;
  bool out_of_memory() const { return out_of_memory_.load(); }

 private:
  void to_channels_last(size_t task) const;
  void sample(size_t task) const;

  const float* x_;
  const float* grid_;
  float* y_;
  const uint16_t* x_half_ = nullptr;  // the float16 flavour's X and Y (then x_ and y_ are null)
  uint16_t* y_half_ = nullptr;
  float* x_channels_last_;
  GridSampleOptions options_;
  int64_t batch_, channels_;
  int64_t in_d_, in_h_, in_w_, in_voxels_;
  int64_t out_voxels_;
  mutable std::atomic<bool> out_of_memory_{false};
};

}  // namespace megaportraits
