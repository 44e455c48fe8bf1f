// GridSample3D sampling maths shared by the CPU kernel (grid_sample_3d.cc) and the CUDA kernel
// (grid_sample_3d_cuda.cu): from one normalised grid point to the input voxels it blends and
// their weights, with the padding rule applied; and float <-> IEEE half conversion.
//
// One definition on both sides, so the two kernels cannot drift apart: every function here is
// host and device code (plain C maths, no std:: containers, no exceptions), and the CPU tests
// of the op exercise exactly these lines. Semantics: ONNX GridSample-20 and
// torch.nn.functional.grid_sample on 5-D input (see grid_sample_3d.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MEGAPORTRAITS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MEGAPORTRAITS_HOST_DEVICE inline
#endif

namespace megaportraits {

enum class Interpolation { kLinear, kNearest };
enum class Padding { kZeros, kBorder, kReflection };

// The three attributes of ONNX GridSample-20, parsed once per kernel.
struct GridSampleOptions {
  Interpolation interpolation = Interpolation::kLinear;
  Padding padding = Padding::kZeros;
  bool align_corners = false;
};

namespace core {

// Taps along one axis: two neighbouring indices and their weights. A tap outside the volume
// gets weight 0 and its in-range partner's index, so only voxels that torch would also read
// are read; `inside` is false when no tap is in range (the sample is padding, 0).
struct AxisTaps {
  int64_t index[2];
  float weight[2];
  bool inside;
};

struct VolumeShape {
  int64_t d, h, w;
};

// The corners one output voxel blends: input voxel indices (within one batch item) and weights.
struct Corners {
  int64_t voxel[8];
  float weight[8];
  int count;  // 8 (linear), 1 (nearest) or 0 (outside: the sample is 0)
};

// std::max / std::min argument semantics (a NaN first argument survives max, loses min), which
// clip's NaN rule depends on.
MEGAPORTRAITS_HOST_DEVICE float max_of(float a, float b) { return (a < b) ? b : a; }
MEGAPORTRAITS_HOST_DEVICE float min_of(float a, float b) { return (b < a) ? b : a; }

// Normalised [-1, 1] -> voxel coordinate, with torch's float expressions so results agree to
// the last bit where possible.
MEGAPORTRAITS_HOST_DEVICE float unnormalize(float g, int64_t size, bool align_corners) {
  const float s = static_cast<float>(size);
  return align_corners ? ((g + 1.f) / 2.f) * (s - 1.f) : ((g + 1.f) * s - 1.f) / 2.f;
}

// Clamp to [0, size - 1]. The argument order matters: a NaN ends on size - 1, as in torch.
MEGAPORTRAITS_HOST_DEVICE float clip(float coordinate, int64_t size) {
  return min_of(static_cast<float>(size - 1), max_of(coordinate, 0.f));
}

// Mirror the coordinate at twice_low / 2 and twice_high / 2 (the volume's edges: voxel
// centres with align_corners, outer faces without). The period is 2 * span; taking fmod over
// the full period keeps the parity exact even for huge coordinates. inf/NaN give NaN.
MEGAPORTRAITS_HOST_DEVICE float reflect(float coordinate, float twice_low, float twice_high) {
  if (twice_low == twice_high) return 0.f;
  const float low = twice_low / 2.f;
  const float span = (twice_high - twice_low) / 2.f;
  const float distance = fabsf(coordinate - low);
  const float phase = fmodf(distance, 2.f * span);
  return (phase <= span ? phase : 2.f * span - phase) + low;
}

MEGAPORTRAITS_HOST_DEVICE float source_coordinate(float g, int64_t size, const GridSampleOptions& options) {
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

MEGAPORTRAITS_HOST_DEVICE AxisTaps linear_taps(float c, int64_t size) {
  AxisTaps taps{{0, 0}, {0.f, 0.f}, false};
  // Also rejects NaN and +-inf; only finite values reach the integer conversion.
  if (!(c > -1.f && c < static_cast<float>(size))) return taps;
  const float lower = floorf(c);
  const int64_t i0 = static_cast<int64_t>(lower);
  const bool first_inside = i0 >= 0, second_inside = i0 + 1 < size;
  taps.index[0] = first_inside ? i0 : i0 + 1;
  taps.index[1] = second_inside ? i0 + 1 : i0;
  taps.weight[0] = first_inside ? (lower + 1.f) - c : 0.f;
  taps.weight[1] = second_inside ? c - lower : 0.f;
  taps.inside = true;
  return taps;
}

// Nearest rounds half to even (nearbyint), as torch and the ONNX reference do.
MEGAPORTRAITS_HOST_DEVICE AxisTaps nearest_tap(float c, int64_t size) {
  AxisTaps taps{{0, 0}, {0.f, 0.f}, false};
  const float r = nearbyintf(c);
  if (r >= 0.f && r < static_cast<float>(size)) {
    taps.index[0] = taps.index[1] = static_cast<int64_t>(r);
    taps.weight[0] = 1.f;
    taps.inside = true;
  }
  return taps;
}

// g: one grid point (x, y, z).
MEGAPORTRAITS_HOST_DEVICE Corners corners_of(const float* g, const VolumeShape& in, const GridSampleOptions& options) {
  Corners corners;
  const bool linear = options.interpolation == Interpolation::kLinear;
  const float cx = source_coordinate(g[0], in.w, options);
  const float cy = source_coordinate(g[1], in.h, options);
  const float cz = source_coordinate(g[2], in.d, options);
  const AxisTaps x = linear ? linear_taps(cx, in.w) : nearest_tap(cx, in.w);
  const AxisTaps y = linear ? linear_taps(cy, in.h) : nearest_tap(cy, in.h);
  const AxisTaps z = linear ? linear_taps(cz, in.d) : nearest_tap(cz, in.d);
  corners.count = (x.inside && y.inside && z.inside) ? (linear ? 8 : 1) : 0;
  for (int k = 0; k < corners.count; ++k) {
    const int kx = k & 1, ky = (k >> 1) & 1, kz = k >> 2;
    corners.voxel[k] = (z.index[kz] * in.h + y.index[ky]) * in.w + x.index[kx];
    corners.weight[k] = x.weight[kx] * y.weight[ky] * z.weight[kz];
  }
  return corners;
}

// ---- IEEE 754 binary16 <-> binary32 ---------------------------------------------------------
// Exact widening; narrowing rounds to nearest, ties to even, with overflow to inf and NaN kept
// a (quiet) NaN: what numpy's astype(float16), torch's .half() and CUDA's __float2half_rn do.
MEGAPORTRAITS_HOST_DEVICE float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

MEGAPORTRAITS_HOST_DEVICE uint32_t float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

MEGAPORTRAITS_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);  // +-0
  // subnormal: mantissa * 2^-24, exactly representable in float
  int shift = 0;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  return bits_to_float(sign | (static_cast<uint32_t>(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13));
}

MEGAPORTRAITS_HOST_DEVICE uint16_t float_to_half(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));  // NaN
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (magnitude < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (magnitude < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): 0
    const uint32_t exponent = magnitude >> 23;
    const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14 + (127 - 1 - exponent) ... value = mantissa * 2^(exponent-150)
    // half subnormal units are 2^-24: value / 2^-24 = mantissa * 2^(exponent - 126)
    const uint32_t whole = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    const uint32_t rounded = whole + ((rest > halfway || (rest == halfway && (whole & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | rounded);
  }
  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
  const uint32_t rebased = magnitude - (112u << 23);
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

}  // namespace core
}  // namespace megaportraits
