// DequantizeInstanceNormalization: InstanceNormalization(DequantizeLinear(X, x_scale, x_zero_point),
// scale, B, epsilon) for a uint8 X, in one threaded kernel (schema.DEQUANTIZE_INSTANCE_NORM).
//
// Why: in an int8 graph every normalisation reads a quantized convolution's uint8 output. ONNX
// Runtime (1.32) runs that DequantizeLinear and the InstanceNormalization after it on one thread
// each, so on two threads they were a third of an int8 frame that a second core did not shrink.
// Here the statistics are summed in integers, exactly (a normalisation does not depend on the
// dequantization's offset, and its scale only rescales epsilon), and every phase is split into
// tasks that run on ONNX Runtime's intra-op pool.
//
// X is (N, C, ...) uint8; the statistics are per (n, c) plane over the remaining axes, as in
// InstanceNormalization. A plane is cut into chunks so that one large plane (GroupNorm(1, C) as
// InstanceNormalization of the grouped view) still spreads over the threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace megaportraits {

class DequantizeInstanceNormProblem {
 public:
  // Elements per task: large enough that a task's overhead vanishes, small enough that a 256 x
  // 256 plane gives two threads several tasks each.
  static constexpr int64_t kChunk = 16384;
  static_assert(kChunk * 255 * 255 < (int64_t{1} << 32), "a chunk's sum of squares must fit 32 bits");

  DequantizeInstanceNormProblem(const uint8_t* x, const int64_t* shape, size_t rank, float x_scale,
                                const float* gamma, const float* beta, float epsilon, float* y)
      : x_(x), gamma_(gamma), beta_(beta), y_(y), x_scale_(x_scale), epsilon_(epsilon) {
    if (rank < 3) throw std::invalid_argument("DequantizeInstanceNormalization: X must be (N, C, ...) with rank >= 3");
    batch_ = shape[0];
    channels_ = shape[1];
    plane_ = 1;
    for (size_t i = 2; i < rank; ++i) plane_ *= shape[i];
    if (!(x_scale > 0.0f) || !std::isfinite(x_scale))
      throw std::invalid_argument("DequantizeInstanceNormalization: x_scale must be a finite positive number");
    chunks_per_plane_ = std::max<int64_t>(1, (plane_ + kChunk - 1) / kChunk);
    const size_t tasks = task_count();
    sums_.assign(tasks, 0);
    squares_.assign(tasks, 0);
    mean_.assign(static_cast<size_t>(batch_ * channels_), 0.0f);
    gain_.assign(static_cast<size_t>(batch_ * channels_), 0.0f);
  }

  size_t task_count() const { return static_cast<size_t>(batch_ * channels_ * chunks_per_plane_); }

  // Phase 1: the sum and the sum of squares of one chunk's uint8 values, exactly.
  void sum_task(size_t task) {
    int64_t begin, end;
    const uint8_t* plane = chunk_of(task, &begin, &end);
    // a task is one chunk: 32-bit sums vectorise, and kChunk x 255^2 stays below 2^32
    uint32_t sum = 0, squares = 0;
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t v = plane[i];
      sum += v;
      squares += v * v;
    }
    sums_[task] = sum;
    squares_[task] = squares;
  }

  // Phase 2 (serial, one pass over the planes): mean and 1 / sqrt(variance + epsilon) per plane,
  // the variance from exact integer sums (128-bit: a 512 x 512 x 144 group overflows 64 bits).
  void finish_statistics() {
    const double count = static_cast<double>(plane_);
    for (int64_t p = 0; p < batch_ * channels_; ++p) {
      unsigned __int128 sum = 0, squares = 0;
      for (int64_t k = 0; k < chunks_per_plane_; ++k) {
        sum += sums_[static_cast<size_t>(p * chunks_per_plane_ + k)];
        squares += squares_[static_cast<size_t>(p * chunks_per_plane_ + k)];
      }
      const unsigned __int128 n = static_cast<unsigned __int128>(plane_);
      const unsigned __int128 spread = n * squares - sum * sum;  // n^2 var, exact and >= 0
      const double variance = static_cast<double>(spread) / (count * count);
      const double scale = static_cast<double>(x_scale_);
      const double inverse = 1.0 / std::sqrt(scale * scale * variance + static_cast<double>(epsilon_));
      const int64_t c = p % channels_;
      mean_[static_cast<size_t>(p)] = static_cast<float>(static_cast<double>(sum) / count);
      gain_[static_cast<size_t>(p)] = static_cast<float>(static_cast<double>(gamma_[c]) * scale * inverse);
    }
  }

  // Phase 3: y = (q - mean) * gain + beta over one chunk.
  void normalise_task(size_t task) {
    int64_t begin, end;
    const uint8_t* plane = chunk_of(task, &begin, &end);
    const int64_t p = static_cast<int64_t>(task) / chunks_per_plane_;
    const float mean = mean_[static_cast<size_t>(p)], gain = gain_[static_cast<size_t>(p)];
    const float shift = beta_[p % channels_];
    float* out = y_ + p * plane_;
    for (int64_t i = begin; i < end; ++i) out[i] = (static_cast<float>(plane[i]) - mean) * gain + shift;
  }

 private:
  const uint8_t* chunk_of(size_t task, int64_t* begin, int64_t* end) const {
    const int64_t p = static_cast<int64_t>(task) / chunks_per_plane_;
    const int64_t k = static_cast<int64_t>(task) % chunks_per_plane_;
    *begin = k * kChunk;
    *end = std::min(plane_, *begin + kChunk);
    return x_ + p * plane_;
  }

  const uint8_t* x_;
  const float* gamma_;
  const float* beta_;
  float* y_;
  float x_scale_;
  float epsilon_;
  int64_t batch_ = 0, channels_ = 0, plane_ = 0, chunks_per_plane_ = 1;
  std::vector<uint64_t> sums_, squares_;
  std::vector<float> mean_, gain_;
};

}  // namespace megaportraits
