// GridSample3D CUDA kernel; see grid_sample_3d_cuda.h. Compiled by nvcc only when setup.py
// finds it (and the CUDA and ONNX Runtime headers); never compiled into the CPU-only library.
//
// Layout: one thread per output voxel and a block of channels. Each thread computes its
// voxel's corners once (core::corners_of, the CPU kernel's code) and then blends the eight
// corner values channel after channel. Neighbouring threads take neighbouring output voxels,
// so with a smooth grid (the model's warps) their corner reads fall on neighbouring input
// voxels and the Y writes of a warp are one contiguous run per channel: coalesced stores,
// mostly coalesced loads, no shared memory and no copy of X (unlike the CPU kernel, whose
// channels-last copy pays off because a CPU core reads whole cache lines per corner).
// float16 data is widened to float32 for the blend and rounded once (to nearest even).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "grid_sample_3d_cuda.h"

namespace megaportraits {
namespace cuda {
namespace {

constexpr int kThreads = 256;        // output voxels per block
constexpr int kChannelsPerBlock = 16;  // gridDim.y splits the channels, so small N*D'H'W' still fills the GPU

template <typename T>
__device__ __forceinline__ float load(const T* p);
template <>
__device__ __forceinline__ float load<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(__ldg(p)); }

template <typename T>
__device__ __forceinline__ void store(T* p, float v);
template <>
__device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__global__ void sample_kernel(const T* __restrict__ x, const float* __restrict__ grid, T* __restrict__ y,
                              int64_t channels, core::VolumeShape in, int64_t out_voxels,
                              GridSampleOptions options) {
  const int64_t n = blockIdx.z;
  const int64_t voxel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (voxel >= out_voxels) return;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerBlock;
  const int64_t c_end = c_begin + kChannelsPerBlock < channels ? c_begin + kChannelsPerBlock : channels;
  const core::Corners corners = core::corners_of(grid + (n * out_voxels + voxel) * 3, in, options);
  const int64_t in_voxels = in.d * in.h * in.w;
  const T* volume = x + n * channels * in_voxels;
  T* out = y + n * channels * out_voxels + voxel;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const T* plane = volume + c * in_voxels;
    float value = 0.f;
    for (int k = 0; k < corners.count; ++k) value += corners.weight[k] * load(plane + corners.voxel[k]);
    store(out + c * out_voxels, value);
  }
}

}  // namespace

std::string grid_sample_3d(const void* x, const int64_t* x_shape, const float* grid, const int64_t* grid_shape,
                           void* y, const GridSampleOptions& options, bool half, void* stream) {
  const int64_t batch = x_shape[0], channels = x_shape[1];
  const core::VolumeShape in{x_shape[2], x_shape[3], x_shape[4]};
  const int64_t out_voxels = grid_shape[1] * grid_shape[2] * grid_shape[3];
  if (batch == 0 || channels == 0 || out_voxels == 0) return "";
  const int64_t voxel_blocks = (out_voxels + kThreads - 1) / kThreads;
  const int64_t channel_blocks = (channels + kChannelsPerBlock - 1) / kChannelsPerBlock;
  if (voxel_blocks > 0x7fffffff || channel_blocks > 65535 || batch > 65535) {
    return "GridSample3D (CUDA): the problem is too large for one launch (batch " + std::to_string(batch) +
           ", " + std::to_string(channels) + " channels, " + std::to_string(out_voxels) + " output voxels)";
  }
  const dim3 blocks(static_cast<unsigned>(voxel_blocks), static_cast<unsigned>(channel_blocks),
                    static_cast<unsigned>(batch));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (half) {
    sample_kernel<__half><<<blocks, kThreads, 0, s>>>(static_cast<const __half*>(x), grid, static_cast<__half*>(y),
                                                      channels, in, out_voxels, options);
  } else {
    sample_kernel<float><<<blocks, kThreads, 0, s>>>(static_cast<const float*>(x), grid, static_cast<float*>(y),
                                                     channels, in, out_voxels, options);
  }
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return std::string("GridSample3D (CUDA): kernel launch failed: ") + cudaGetErrorString(error);
  return "";
}

}  // namespace cuda
}  // namespace megaportraits
