// GridSample3D kernel; see grid_sample_3d.h for the contract.
//
// Layout of the work: output voxels are processed in blocks of kBlockVoxels. For a block, the
// eight trilinear corners (offset into one channel plane + weight, zero for corners outside the
// volume) are computed once; then for every channel the block's outputs are a weighted sum of
// eight gathered inputs, written contiguously to Y[n, c, block]. The tables are small enough
// to stay in L1 while all C channels reuse them, and the channel loop is a straight loop that
// the compiler vectorises (AVX2/AVX-512 gathers in the clones below; SSE2 otherwise).
#include "grid_sample_3d.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace megaportraits {
namespace {

constexpr int64_t kBlockVoxels = 256;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__) && \
    defined(__linux__)
// Runtime dispatch by CPU: the shipped library must run on any x86-64, so the baseline clone
// is plain SSE2 and the faster ones are picked at load time by an ifunc resolver.
#define MEGAPORTRAITS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEGAPORTRAITS_CPU_CLONES
#endif

// Corner taps along one axis: two neighbouring indices and their weights. A tap outside the
// volume keeps index 0 (always a valid read) and weight 0, so the sweep needs no branches.
struct AxisTaps {
  int64_t index[2] = {0, 0};
  float weight[2] = {0.f, 0.f};
};

// Normalised [-1, 1] -> voxel coordinate, with torch's float expressions so results agree to
// the last bit where possible.
inline float unnormalize(float g, int64_t size, bool align_corners) {
  const float s = static_cast<float>(size);
  return align_corners ? ((g + 1.f) / 2.f) * (s - 1.f) : ((g + 1.f) * s - 1.f) / 2.f;
}

// Clamp to [0, size - 1]. The argument order matters: a NaN ends on size - 1, as in torch.
inline float clip(float coordinate, int64_t size) {
  return std::min(static_cast<float>(size - 1), std::max(coordinate, 0.f));
}

// Mirror the coordinate at twice_low / 2 and twice_high / 2 (the volume's edges: voxel
// centres with align_corners, outer faces without). The period is 2 * span; taking fmod over
// the full period keeps the parity exact even for huge coordinates. inf/NaN give NaN.
inline float reflect(float coordinate, float twice_low, float twice_high) {
  if (twice_low == twice_high) return 0.f;
  const float low = twice_low / 2.f;
  const float span = (twice_high - twice_low) / 2.f;
  const float distance = std::fabs(coordinate - low);
  const float phase = std::fmod(distance, 2.f * span);
  return (phase <= span ? phase : 2.f * span - phase) + low;
}

inline float source_coordinate(float g, int64_t size, const GridSampleOptions& options) {
  float c = unnormalize(g, size, options.align_corners);
  switch (options.padding) {
    case Padding::kZeros:
      return c;
    case Padding::kBorder:
      return clip(c, size);
    case Padding::kReflection: {
      const float s = static_cast<float>(size);
      c = options.align_corners ? reflect(c, 0.f, 2.f * (s - 1.f)) : reflect(c, -1.f, 2.f * s - 1.f);
      return clip(c, size);
    }
  }
  return c;
}

inline AxisTaps linear_taps(float c, int64_t size) {
  AxisTaps taps;
  // Also rejects NaN and +-inf; only finite values reach the integer conversion.
  if (!(c > -1.f && c < static_cast<float>(size))) return taps;
  const float lower = std::floor(c);
  const int64_t i0 = static_cast<int64_t>(lower);
  if (i0 >= 0) {
    taps.index[0] = i0;
    taps.weight[0] = (lower + 1.f) - c;
  }
  if (i0 + 1 < size) {
    taps.index[1] = i0 + 1;
    taps.weight[1] = c - lower;
  }
  return taps;
}

// Nearest rounds half to even (nearbyint), as torch and the ONNX reference do.
inline AxisTaps nearest_tap(float c, int64_t size) {
  AxisTaps taps;
  const float r = std::nearbyint(c);
  if (r >= 0.f && r < static_cast<float>(size)) {
    taps.index[0] = static_cast<int64_t>(r);
    taps.weight[0] = 1.f;
  }
  return taps;
}

template <typename Offset>
struct LinearTable {
  Offset offset[8][kBlockVoxels];
  float weight[8][kBlockVoxels];
};

template <typename Offset>
struct NearestTable {
  Offset offset[kBlockVoxels];
  float weight[kBlockVoxels];
};

struct VolumeShape {
  int64_t d, h, w;
};

template <typename Offset>
void fill_linear_table(const float* grid,
                       int64_t count,
                       const VolumeShape& in,
                       const GridSampleOptions& options,
                       LinearTable<Offset>& table) {
  const int64_t hw = in.h * in.w;
  for (int64_t v = 0; v < count; ++v) {
    const AxisTaps x = linear_taps(source_coordinate(grid[3 * v + 0], in.w, options), in.w);
    const AxisTaps y = linear_taps(source_coordinate(grid[3 * v + 1], in.h, options), in.h);
    const AxisTaps z = linear_taps(source_coordinate(grid[3 * v + 2], in.d, options), in.d);
    for (int corner = 0; corner < 8; ++corner) {
      const int cx = corner & 1, cy = (corner >> 1) & 1, cz = corner >> 2;
      table.offset[corner][v] = static_cast<Offset>(z.index[cz] * hw + y.index[cy] * in.w + x.index[cx]);
      table.weight[corner][v] = x.weight[cx] * y.weight[cy] * z.weight[cz];
    }
  }
}

template <typename Offset>
void fill_nearest_table(const float* grid,
                        int64_t count,
                        const VolumeShape& in,
                        const GridSampleOptions& options,
                        NearestTable<Offset>& table) {
  const int64_t hw = in.h * in.w;
  for (int64_t v = 0; v < count; ++v) {
    const AxisTaps x = nearest_tap(source_coordinate(grid[3 * v + 0], in.w, options), in.w);
    const AxisTaps y = nearest_tap(source_coordinate(grid[3 * v + 1], in.h, options), in.h);
    const AxisTaps z = nearest_tap(source_coordinate(grid[3 * v + 2], in.d, options), in.d);
    table.offset[v] = static_cast<Offset>(z.index[0] * hw + y.index[0] * in.w + x.index[0]);
    table.weight[v] = x.weight[0] * y.weight[0] * z.weight[0];
  }
}

template <typename Offset>
inline __attribute__((always_inline)) void sweep_linear_body(const float* __restrict x,
                                                             int64_t in_plane,
                                                             float* __restrict y,
                                                             int64_t out_plane,
                                                             int64_t channels,
                                                             int64_t count,
                                                             const LinearTable<Offset>& t) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* __restrict xc = x + c * in_plane;
    float* __restrict yc = y + c * out_plane;
    for (int64_t v = 0; v < count; ++v) {
      yc[v] = t.weight[0][v] * xc[t.offset[0][v]] + t.weight[1][v] * xc[t.offset[1][v]] +
              t.weight[2][v] * xc[t.offset[2][v]] + t.weight[3][v] * xc[t.offset[3][v]] +
              t.weight[4][v] * xc[t.offset[4][v]] + t.weight[5][v] * xc[t.offset[5][v]] +
              t.weight[6][v] * xc[t.offset[6][v]] + t.weight[7][v] * xc[t.offset[7][v]];
    }
  }
}

template <typename Offset>
inline __attribute__((always_inline)) void sweep_nearest_body(const float* __restrict x,
                                                              int64_t in_plane,
                                                              float* __restrict y,
                                                              int64_t out_plane,
                                                              int64_t channels,
                                                              int64_t count,
                                                              const NearestTable<Offset>& t) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* __restrict xc = x + c * in_plane;
    float* __restrict yc = y + c * out_plane;
    for (int64_t v = 0; v < count; ++v) yc[v] = t.weight[v] * xc[t.offset[v]];
  }
}

MEGAPORTRAITS_CPU_CLONES
void sweep_linear(const float* x, int64_t in_plane, float* y, int64_t out_plane, int64_t channels,
                  int64_t count, const LinearTable<int32_t>& t) {
  sweep_linear_body(x, in_plane, y, out_plane, channels, count, t);
}

MEGAPORTRAITS_CPU_CLONES
void sweep_linear(const float* x, int64_t in_plane, float* y, int64_t out_plane, int64_t channels,
                  int64_t count, const LinearTable<int64_t>& t) {
  sweep_linear_body(x, in_plane, y, out_plane, channels, count, t);
}

MEGAPORTRAITS_CPU_CLONES
void sweep_nearest(const float* x, int64_t in_plane, float* y, int64_t out_plane, int64_t channels,
                   int64_t count, const NearestTable<int32_t>& t) {
  sweep_nearest_body(x, in_plane, y, out_plane, channels, count, t);
}

MEGAPORTRAITS_CPU_CLONES
void sweep_nearest(const float* x, int64_t in_plane, float* y, int64_t out_plane, int64_t channels,
                   int64_t count, const NearestTable<int64_t>& t) {
  sweep_nearest_body(x, in_plane, y, out_plane, channels, count, t);
}

struct BlockJob {
  const float* x;       // X[n, 0]
  const float* grid;    // grid[n, first voxel of the block]
  float* y;             // Y[n, 0, first voxel of the block]
  int64_t count;        // voxels in the block
  int64_t channels, in_plane, out_plane;
  VolumeShape in;
};

template <typename Offset>
void run_block(const BlockJob& job, const GridSampleOptions& options) {
  if (options.interpolation == Interpolation::kLinear) {
    LinearTable<Offset> table;
    fill_linear_table(job.grid, job.count, job.in, options, table);
    sweep_linear(job.x, job.in_plane, job.y, job.out_plane, job.channels, job.count, table);
  } else {
    NearestTable<Offset> table;
    fill_nearest_table(job.grid, job.count, job.in, options, table);
    sweep_nearest(job.x, job.in_plane, job.y, job.out_plane, job.channels, job.count, table);
  }
}

std::string shape_string(const int64_t* shape, size_t rank) {
  std::string s = "(";
  for (size_t i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

}  // namespace

Interpolation parse_interpolation(const std::string& mode) {
  if (mode == "linear") return Interpolation::kLinear;
  if (mode == "nearest") return Interpolation::kNearest;
  throw std::invalid_argument("GridSample3D: mode '" + mode +
                              "' is not supported; use 'linear' (trilinear) or 'nearest'");
}

Padding parse_padding(const std::string& padding_mode) {
  if (padding_mode == "zeros") return Padding::kZeros;
  if (padding_mode == "border") return Padding::kBorder;
  if (padding_mode == "reflection") return Padding::kReflection;
  throw std::invalid_argument("GridSample3D: padding_mode '" + padding_mode +
                              "' is not supported; use 'zeros', 'border' or 'reflection'");
}

bool parse_align_corners(int64_t align_corners) {
  if (align_corners == 0 || align_corners == 1) return align_corners == 1;
  throw std::invalid_argument("GridSample3D: align_corners must be 0 or 1, got " + std::to_string(align_corners));
}

void check_shapes(const int64_t* x_shape, size_t x_rank, const int64_t* grid_shape, size_t grid_rank) {
  if (x_rank != 5) {
    throw std::invalid_argument("GridSample3D: X must be 5-D (N, C, D, H, W), got shape " +
                                shape_string(x_shape, x_rank));
  }
  if (grid_rank != 5 || grid_shape[4] != 3) {
    throw std::invalid_argument("GridSample3D: grid must be 5-D (N, D_out, H_out, W_out, 3), got shape " +
                                shape_string(grid_shape, grid_rank));
  }
  if (grid_shape[0] != x_shape[0]) {
    throw std::invalid_argument("GridSample3D: X and grid must have the same batch size, got X " +
                                shape_string(x_shape, x_rank) + " and grid " + shape_string(grid_shape, grid_rank));
  }
  const bool output_empty = x_shape[0] == 0 || x_shape[1] == 0 || grid_shape[1] == 0 || grid_shape[2] == 0 ||
                            grid_shape[3] == 0;
  const bool input_volume_empty = x_shape[2] == 0 || x_shape[3] == 0 || x_shape[4] == 0;
  if (input_volume_empty && !output_empty) {
    throw std::invalid_argument("GridSample3D: X has an empty volume " + shape_string(x_shape, x_rank) +
                                "; there is nothing to sample");
  }
}

void output_shape(const int64_t* x_shape, const int64_t* grid_shape, int64_t* y_shape) {
  y_shape[0] = x_shape[0];
  y_shape[1] = x_shape[1];
  y_shape[2] = grid_shape[1];
  y_shape[3] = grid_shape[2];
  y_shape[4] = grid_shape[3];
}

GridSample3DProblem::GridSample3DProblem(const float* x,
                                         const int64_t* x_shape,
                                         const float* grid,
                                         const int64_t* grid_shape,
                                         float* y,
                                         const GridSampleOptions& options)
    : x_(x),
      grid_(grid),
      y_(y),
      options_(options),
      batch_(x_shape[0]),
      channels_(x_shape[1]),
      in_d_(x_shape[2]),
      in_h_(x_shape[3]),
      in_w_(x_shape[4]),
      out_voxels_(grid_shape[1] * grid_shape[2] * grid_shape[3]),
      blocks_per_item_((out_voxels_ + kBlockVoxels - 1) / kBlockVoxels) {
  if (channels_ == 0) blocks_per_item_ = 0;  // nothing to write
}

void GridSample3DProblem::run_task(size_t task) const {
  const int64_t n = static_cast<int64_t>(task) / blocks_per_item_;
  const int64_t first = (static_cast<int64_t>(task) % blocks_per_item_) * kBlockVoxels;
  const int64_t in_plane = in_d_ * in_h_ * in_w_;
  BlockJob job;
  job.x = x_ + n * channels_ * in_plane;
  job.grid = grid_ + (n * out_voxels_ + first) * 3;
  job.y = y_ + n * channels_ * out_voxels_ + first;
  job.count = std::min(kBlockVoxels, out_voxels_ - first);
  job.channels = channels_;
  job.in_plane = in_plane;
  job.out_plane = out_voxels_;
  job.in = VolumeShape{in_d_, in_h_, in_w_};
  if (in_plane <= std::numeric_limits<int32_t>::max()) {
    run_block<int32_t>(job, options_);
  } else {
    run_block<int64_t>(job, options_);
  }
}

}  // namespace megaportraits
