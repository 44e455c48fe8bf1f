// ONNX Runtime front end of the custom-op library loaded with
// SessionOptions.register_custom_ops_library(megaportraits.custom_ops_library()): GridSample3D,
// and DequantizeInstanceNormalization (the int8 graphs' threaded uint8 normalisation, CPU only;
// dequantize_instance_norm.h). Op identities: megaportraits.schema (GRID_SAMPLE_3D,
// DEQUANTIZE_INSTANCE_NORM).
//
// Plain C API on purpose: every ONNX Runtime entry point comes from the OrtApiBase handed to
// RegisterCustomOps, so the library links nothing from onnxruntime and works with any runtime
// that offers API version kOrtApiVersion. 17 (onnxruntime 1.17) is the oldest with both
// KernelContext_ParallelFor (the op runs on the session's own intra-op pool, never
// oversubscribing) and the status-returning CreateKernelV2/KernelComputeV2 (clear errors at
// session creation and at run time instead of crashes).
//
// Flavours of the one op (same domain, name and version; ONNX Runtime picks by input type and
// execution provider): CPU float32 (X, grid, Y float32), CPU float16 (X and Y float16, grid
// float32: the fp16 bundles' graphs) and, when the library is built with CUDA
// (MEGAPORTRAITS_WITH_CUDA, see setup.py), the same two on the CUDA execution provider, run on
// ONNX Runtime's compute stream (grid_sample_3d_cuda.cu). The CUDA flavours are registered only
// when the loading runtime offers CUDAExecutionProvider.
#include <onnxruntime_c_api.h>

#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "dequantize_instance_norm.h"
#include "grid_sample_3d.h"
#if defined(MEGAPORTRAITS_WITH_CUDA)
#include "grid_sample_3d_cuda.h"
#endif

namespace {

constexpr uint32_t kOrtApiVersion = 17;
constexpr const char* kDomain = "com.megaportraits";
constexpr const char* kOpName = "GridSample3D";
constexpr int kOpVersion = 1;
constexpr const char* kNormOpName = "DequantizeInstanceNormalization";

using megaportraits::GridSampleOptions;

OrtStatus* error_status(const OrtApi* api, OrtErrorCode code, const std::string& message) {
  return api->CreateStatus(code, message.c_str());
}

// A string attribute, or `fallback` when the node does not set it (ONNX defaults apply).
OrtStatus* read_string_attribute(const OrtApi* api,
                                 const OrtKernelInfo* info,
                                 const char* name,
                                 const std::string& fallback,
                                 std::string* value) {
  size_t size = 0;
  if (OrtStatus* missing = api->KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    api->ReleaseStatus(missing);
    *value = fallback;
    return nullptr;
  }
  std::string buffer(size, '\0');
  if (OrtStatus* status = api->KernelInfoGetAttribute_string(info, name, &buffer[0], &size)) return status;
  buffer.resize(size > 0 ? size - 1 : 0);  // drop the terminating NUL
  *value = buffer;
  return nullptr;
}

OrtStatus* read_int_attribute(const OrtApi* api,
                              const OrtKernelInfo* info,
                              const char* name,
                              int64_t fallback,
                              int64_t* value) {
  if (OrtStatus* missing = api->KernelInfoGetAttribute_int64(info, name, value)) {
    api->ReleaseStatus(missing);
    *value = fallback;
  }
  return nullptr;
}

OrtStatus* read_shape(const OrtApi* api, const OrtValue* value, std::vector<int64_t>* shape) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* status = api->GetTensorTypeAndShape(value, &info)) return status;
  size_t rank = 0;
  OrtStatus* status = api->GetDimensionsCount(info, &rank);
  if (!status) {
    shape->resize(rank);
    status = api->GetDimensions(info, shape->data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

// Which flavour of the op a kernel instance is.
struct Flavour {
  bool half;  // X and Y float16 (grid float32)
  bool cuda;  // on the CUDA execution provider
};

// Attributes are parsed once, when the session creates the kernel.
struct GridSample3DKernel {
  const OrtApi* api;
  GridSampleOptions options;
  Flavour flavour;

  OrtStatus* compute(OrtKernelContext* context) const {
    const OrtValue* x = nullptr;
    const OrtValue* grid = nullptr;
    if (OrtStatus* status = api->KernelContext_GetInput(context, 0, &x)) return status;
    if (OrtStatus* status = api->KernelContext_GetInput(context, 1, &grid)) return status;
    std::vector<int64_t> x_shape, grid_shape;
    if (OrtStatus* status = read_shape(api, x, &x_shape)) return status;
    if (OrtStatus* status = read_shape(api, grid, &grid_shape)) return status;
    try {
      megaportraits::check_shapes(x_shape.data(), x_shape.size(), grid_shape.data(), grid_shape.size());
    } catch (const std::invalid_argument& e) {
      return error_status(api, ORT_INVALID_ARGUMENT, e.what());
    }

    int64_t y_shape[5];
    megaportraits::output_shape(x_shape.data(), grid_shape.data(), y_shape);
    OrtValue* y = nullptr;
    if (OrtStatus* status = api->KernelContext_GetOutput(context, 0, y_shape, 5, &y)) return status;

    void* x_data = nullptr;
    void* grid_data = nullptr;
    void* y_data = nullptr;
    if (OrtStatus* status = api->GetTensorMutableData(const_cast<OrtValue*>(x), &x_data)) return status;
    if (OrtStatus* status = api->GetTensorMutableData(const_cast<OrtValue*>(grid), &grid_data)) return status;
    if (OrtStatus* status = api->GetTensorMutableData(y, &y_data)) return status;

#if defined(MEGAPORTRAITS_WITH_CUDA)
    if (flavour.cuda) {
      void* stream = nullptr;
      if (OrtStatus* status = api->KernelContext_GetGPUComputeStream(context, &stream)) return status;
      const std::string error = megaportraits::cuda::grid_sample_3d(
          x_data, x_shape.data(), static_cast<const float*>(grid_data), grid_shape.data(), y_data, options,
          flavour.half, stream);
      return error.empty() ? nullptr : error_status(api, ORT_FAIL, error);
    }
#endif
    using Problem = megaportraits::GridSample3DProblem;
    std::unique_ptr<Problem> owned;
    try {
      if (flavour.half) {
        owned = std::make_unique<Problem>(static_cast<const uint16_t*>(x_data), x_shape.data(),
                                          static_cast<const float*>(grid_data), grid_shape.data(),
                                          static_cast<uint16_t*>(y_data), options);
      } else {
        owned = std::make_unique<Problem>(static_cast<const float*>(x_data), x_shape.data(),
                                          static_cast<const float*>(grid_data), grid_shape.data(),
                                          static_cast<float*>(y_data), options);
      }
    } catch (const std::bad_alloc&) {
      return error_status(api, ORT_FAIL, "GridSample3D: out of memory for the channels-last copy of X");
    }
    const Problem& problem = *owned;
    struct PhaseOfProblem {
      const Problem* problem;
      Problem::Phase phase;
    };
    auto run_task = [](void* data, size_t task) {
      const auto* job = static_cast<const PhaseOfProblem*>(data);
      job->problem->run_task(job->phase, task);
    };
    for (const auto phase : Problem::kPhases) {
      PhaseOfProblem job{&problem, phase};
      const size_t tasks = problem.task_count(phase);
      if (tasks == 0) continue;
      if (OrtStatus* status = api->KernelContext_ParallelFor(context, run_task, tasks, 0, &job)) return status;
      if (problem.out_of_memory()) return error_status(api, ORT_FAIL, "GridSample3D: out of memory for a tile");
    }
    return nullptr;
  }
};

// The API of the runtime that registered the library, for shape inference (which gets none).
std::atomic<const OrtApi*> registered_api{nullptr};

// A 5-D input's dimensions, numeric (-1 when unknown) and symbolic; false when its rank is not 5.
bool read_static_shape(const OrtApi* api, OrtShapeInferContext* context, size_t index, int64_t dims[5],
                       std::string names[5]) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* status = api->ShapeInferContext_GetInputTypeShape(context, index, &info)) {
    api->ReleaseStatus(status);
    return false;
  }
  size_t rank = 0;
  const char* symbols[5] = {};
  bool ok = api->GetDimensionsCount(info, &rank) == nullptr && rank == 5 && api->GetDimensions(info, dims, 5) == nullptr &&
            api->GetSymbolicDimensions(info, symbols, 5) == nullptr;
  for (int i = 0; ok && i < 5; ++i) names[i] = symbols[i] ? symbols[i] : "";
  return ok;  // `info` belongs to the context
}

// Y is (N, C) of X and (D', H', W') of grid, so graphs know Y's shape before running. Shapes it
// cannot read (unknown rank) stay unknown here; the kernel reports bad shapes when it runs.
// onnxruntime ignores the returned status, so this never fails.
OrtStatus* ORT_API_CALL infer_output_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  const OrtApi* api = registered_api.load();
  int64_t x_dims[5], grid_dims[5];
  std::string x_names[5], grid_names[5];
  if (api == nullptr || !read_static_shape(api, context, 0, x_dims, x_names) ||
      !read_static_shape(api, context, 1, grid_dims, grid_names)) {
    return nullptr;
  }
  const int64_t y_dims[5] = {x_dims[0], x_dims[1], grid_dims[1], grid_dims[2], grid_dims[3]};
  const char* y_names[5] = {x_names[0].c_str(), x_names[1].c_str(), grid_names[1].c_str(), grid_names[2].c_str(),
                            grid_names[3].c_str()};
  // The API cannot leave a dimension unset: an unknown, unnamed one would become a fixed -1 that
  // every run then contradicts. Then Y's shape stays unknown altogether.
  for (int i = 0; i < 5; ++i) {
    if (y_dims[i] < 0 && y_names[i][0] == '\0') return nullptr;
  }
  // Y has X's element type (float32, or float16 in the half flavour).
  ONNXTensorElementDataType y_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  OrtTensorTypeAndShapeInfo* x_info = nullptr;
  if (OrtStatus* status = api->ShapeInferContext_GetInputTypeShape(context, 0, &x_info)) {
    api->ReleaseStatus(status);
  } else if (OrtStatus* type_status = api->GetTensorElementType(x_info, &y_type)) {
    api->ReleaseStatus(type_status);
    y_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtTensorTypeAndShapeInfo* y = nullptr;
  if (OrtStatus* status = api->CreateTensorTypeAndShapeInfo(&y)) {
    api->ReleaseStatus(status);
    return nullptr;
  }
  OrtStatus* status = api->SetTensorElementType(y, y_type);
  if (!status) status = api->SetDimensions(y, y_dims, 5);
  if (!status) status = api->SetSymbolicDimensions(y, y_names, 5);
  if (!status) status = api->ShapeInferContext_SetOutputTypeShape(context, 0, y);
  if (status) api->ReleaseStatus(status);
  api->ReleaseTensorTypeAndShapeInfo(y);
  return nullptr;
}

Flavour flavour_of(const OrtCustomOp* op);

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                      void** kernel) {
  std::string mode, padding_mode;
  int64_t align_corners = 0;
  if (OrtStatus* status = read_string_attribute(api, info, "mode", "linear", &mode)) return status;
  if (OrtStatus* status = read_string_attribute(api, info, "padding_mode", "zeros", &padding_mode)) return status;
  if (OrtStatus* status = read_int_attribute(api, info, "align_corners", 0, &align_corners)) return status;
  try {
    auto instance = std::make_unique<GridSample3DKernel>();
    instance->api = api;
    instance->flavour = flavour_of(op);
    instance->options.interpolation = megaportraits::parse_interpolation(mode);
    instance->options.padding = megaportraits::parse_padding(padding_mode);
    instance->options.align_corners = megaportraits::parse_align_corners(align_corners);
    *kernel = instance.release();
    return nullptr;
  } catch (const std::invalid_argument& e) {
    return error_status(api, ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return error_status(api, ORT_FAIL, std::string("GridSample3D: ") + e.what());
  }
}

OrtStatus* ORT_API_CALL compute_kernel(void* kernel, OrtKernelContext* context) {
  return static_cast<const GridSample3DKernel*>(kernel)->compute(context);
}

void ORT_API_CALL destroy_kernel(void* kernel) { delete static_cast<GridSample3DKernel*>(kernel); }

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kOpName; }
const char* ORT_API_CALL op_provider(const OrtCustomOp* op) {
  return flavour_of(op).cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
}
size_t ORT_API_CALL input_count(const OrtCustomOp*) { return 2; }
size_t ORT_API_CALL output_count(const OrtCustomOp*) { return 1; }
ONNXTensorElementDataType ORT_API_CALL float_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
// The half flavour: X (input 0) and Y float16, the grid (input 1) float32.
ONNXTensorElementDataType ORT_API_CALL half_input_type(const OrtCustomOp*, size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
ONNXTensorElementDataType ORT_API_CALL half_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL default_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL start_version(const OrtCustomOp*) { return kOpVersion; }
int ORT_API_CALL end_version(const OrtCustomOp*) { return kOpVersion; }

// Only the fields of API version kOrtApiVersion are set; onnxruntime reads no further.
OrtCustomOp make_grid_sample_3d_op(bool half) {
  OrtCustomOp op{};
  op.version = kOrtApiVersion;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = half ? half_input_type : float_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = half ? half_type : float_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = default_memory;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute_kernel;
  op.InferOutputShapeFn = infer_output_shape;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

// The flavours, in one array so that a kernel finds its own by the op it was created from.
const OrtCustomOp kFlavourOps[] = {make_grid_sample_3d_op(false), make_grid_sample_3d_op(true),
                                   make_grid_sample_3d_op(false), make_grid_sample_3d_op(true)};
const Flavour kFlavours[] = {{false, false}, {true, false}, {false, true}, {true, true}};
constexpr size_t kCpuFlavours = 2;
constexpr size_t kAllFlavours = 4;

Flavour flavour_of(const OrtCustomOp* op) {
  for (size_t i = 0; i < kAllFlavours; ++i) {
    if (op == &kFlavourOps[i]) return kFlavours[i];
  }
  return Flavour{false, false};
}

// ---- DequantizeInstanceNormalization (CPU) ----------------------------------------------------
// Inputs X uint8 (N, C, ...), x_scale float (one value), x_zero_point uint8 (one value; a
// normalisation does not depend on it), scale and B float (C); attribute epsilon (default 1e-5,
// as InstanceNormalization's); Y float, X's shape.
struct DequantizeInstanceNormKernel {
  const OrtApi* api;
  float epsilon;

  OrtStatus* element_count(const OrtValue* value, size_t* count) const {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    if (OrtStatus* status = api->GetTensorTypeAndShape(value, &info)) return status;
    OrtStatus* status = api->GetTensorShapeElementCount(info, count);
    api->ReleaseTensorTypeAndShapeInfo(info);
    return status;
  }

  OrtStatus* compute(OrtKernelContext* context) const {
    const OrtValue* inputs[5] = {};
    for (size_t i = 0; i < 5; ++i) {
      if (OrtStatus* status = api->KernelContext_GetInput(context, i, &inputs[i])) return status;
    }
    std::vector<int64_t> shape;
    if (OrtStatus* status = read_shape(api, inputs[0], &shape)) return status;
    if (shape.size() < 3) {
      return error_status(api, ORT_INVALID_ARGUMENT, "DequantizeInstanceNormalization: X must be (N, C, ...) with rank >= 3");
    }
    size_t counts[5] = {};
    for (size_t i = 1; i < 5; ++i) {
      if (OrtStatus* status = element_count(inputs[i], &counts[i])) return status;
    }
    if (counts[1] != 1 || counts[2] != 1) {
      return error_status(api, ORT_INVALID_ARGUMENT,
                          "DequantizeInstanceNormalization: x_scale and x_zero_point must be single values (per-tensor)");
    }
    if (counts[3] != static_cast<size_t>(shape[1]) || counts[4] != static_cast<size_t>(shape[1])) {
      return error_status(api, ORT_INVALID_ARGUMENT,
                          "DequantizeInstanceNormalization: scale and B must have one value per channel of X");
    }
    OrtValue* y = nullptr;
    if (OrtStatus* status = api->KernelContext_GetOutput(context, 0, shape.data(), shape.size(), &y)) return status;
    void* data[5] = {};
    for (size_t i = 0; i < 5; ++i) {
      if (OrtStatus* status = api->GetTensorMutableData(const_cast<OrtValue*>(inputs[i]), &data[i])) return status;
    }
    void* y_data = nullptr;
    if (OrtStatus* status = api->GetTensorMutableData(y, &y_data)) return status;
    using Problem = megaportraits::DequantizeInstanceNormProblem;
    std::unique_ptr<Problem> owned;
    try {
      owned = std::make_unique<Problem>(static_cast<const uint8_t*>(data[0]), shape.data(), shape.size(),
                                        *static_cast<const float*>(data[1]), static_cast<const float*>(data[3]),
                                        static_cast<const float*>(data[4]), epsilon, static_cast<float*>(y_data));
    } catch (const std::invalid_argument& e) {
      return error_status(api, ORT_INVALID_ARGUMENT, e.what());
    } catch (const std::bad_alloc&) {
      return error_status(api, ORT_FAIL, "DequantizeInstanceNormalization: out of memory for the statistics");
    }
    Problem* problem = owned.get();
    const size_t tasks = problem->task_count();
    if (tasks == 0) return nullptr;
    auto sum = [](void* job, size_t task) { static_cast<Problem*>(job)->sum_task(task); };
    auto normalise = [](void* job, size_t task) { static_cast<Problem*>(job)->normalise_task(task); };
    if (OrtStatus* status = api->KernelContext_ParallelFor(context, sum, tasks, 0, problem)) return status;
    problem->finish_statistics();
    return api->KernelContext_ParallelFor(context, normalise, tasks, 0, problem);
  }
};

// Y has X's shape (numeric and symbolic dimensions) and element type float.
OrtStatus* ORT_API_CALL infer_norm_output_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  const OrtApi* api = registered_api.load();
  if (api == nullptr) return nullptr;
  OrtTensorTypeAndShapeInfo* x_info = nullptr;
  if (OrtStatus* status = api->ShapeInferContext_GetInputTypeShape(context, 0, &x_info)) {
    api->ReleaseStatus(status);
    return nullptr;
  }
  size_t rank = 0;
  if (OrtStatus* status = api->GetDimensionsCount(x_info, &rank)) {
    api->ReleaseStatus(status);
    return nullptr;
  }
  std::vector<int64_t> dims(rank);
  std::vector<const char*> symbols(rank, nullptr);
  OrtStatus* status = api->GetDimensions(x_info, dims.data(), rank);
  if (!status) status = api->GetSymbolicDimensions(x_info, symbols.data(), rank);
  if (status) {
    api->ReleaseStatus(status);
    return nullptr;
  }
  for (size_t i = 0; i < rank; ++i) {
    if (symbols[i] == nullptr) symbols[i] = "";
    if (dims[i] < 0 && symbols[i][0] == '\0') return nullptr;  // see infer_output_shape
  }
  OrtTensorTypeAndShapeInfo* y = nullptr;
  if (OrtStatus* create = api->CreateTensorTypeAndShapeInfo(&y)) {
    api->ReleaseStatus(create);
    return nullptr;
  }
  status = api->SetTensorElementType(y, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!status) status = api->SetDimensions(y, dims.data(), rank);
  if (!status) status = api->SetSymbolicDimensions(y, symbols.data(), rank);
  if (!status) status = api->ShapeInferContext_SetOutputTypeShape(context, 0, y);
  if (status) api->ReleaseStatus(status);
  api->ReleaseTensorTypeAndShapeInfo(y);
  return nullptr;
}

OrtStatus* ORT_API_CALL create_norm_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                                           void** kernel) {
  float epsilon = 1e-5f;
  if (OrtStatus* missing = api->KernelInfoGetAttribute_float(info, "epsilon", &epsilon)) {
    api->ReleaseStatus(missing);
    epsilon = 1e-5f;
  }
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon)) {
    return error_status(api, ORT_INVALID_ARGUMENT, "DequantizeInstanceNormalization: epsilon must be >= 0");
  }
  try {
    *kernel = new DequantizeInstanceNormKernel{api, epsilon};
    return nullptr;
  } catch (const std::bad_alloc&) {
    return error_status(api, ORT_FAIL, "DequantizeInstanceNormalization: out of memory");
  }
}

OrtStatus* ORT_API_CALL compute_norm_kernel(void* kernel, OrtKernelContext* context) {
  return static_cast<const DequantizeInstanceNormKernel*>(kernel)->compute(context);
}

void ORT_API_CALL destroy_norm_kernel(void* kernel) { delete static_cast<DequantizeInstanceNormKernel*>(kernel); }

const char* ORT_API_CALL norm_op_name(const OrtCustomOp*) { return kNormOpName; }
const char* ORT_API_CALL cpu_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
size_t ORT_API_CALL norm_input_count(const OrtCustomOp*) { return 5; }
// X and x_zero_point uint8; x_scale, scale, B float
ONNXTensorElementDataType ORT_API_CALL norm_input_type(const OrtCustomOp*, size_t index) {
  return index == 0 || index == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOp make_dequantize_instance_norm_op() {
  OrtCustomOp op{};
  op.version = kOrtApiVersion;
  op.GetName = norm_op_name;
  op.GetExecutionProviderType = cpu_provider;
  op.GetInputType = norm_input_type;
  op.GetInputTypeCount = norm_input_count;
  op.GetOutputType = float_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_norm_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = default_memory;
  op.CreateKernelV2 = create_norm_kernel;
  op.KernelComputeV2 = compute_norm_kernel;
  op.InferOutputShapeFn = infer_norm_output_shape;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

const OrtCustomOp kDequantizeInstanceNormOp = make_dequantize_instance_norm_op();

#if defined(MEGAPORTRAITS_WITH_CUDA)
// True when the runtime that loads the library can run CUDA kernels at all.
bool runtime_has_cuda(const OrtApi* api) {
  char** providers = nullptr;
  int count = 0;
  if (OrtStatus* status = api->GetAvailableProviders(&providers, &count)) {
    api->ReleaseStatus(status);
    return false;
  }
  bool found = false;
  for (int i = 0; i < count; ++i) found = found || std::string(providers[i]) == "CUDAExecutionProvider";
  if (OrtStatus* status = api->ReleaseAvailableProviders(providers, count)) api->ReleaseStatus(status);
  return found;
}
#endif

// Sessions hold raw pointers to the domains they were registered with, so every domain created
// here lives until the library is unloaded (onnxruntime unloads it after its sessions end).
class DomainKeeper {
 public:
  void keep(const OrtApi* api, OrtCustomOpDomain* domain) {
    std::lock_guard<std::mutex> lock(mutex_);
    domains_.push_back({api, domain});
  }
  ~DomainKeeper() {
    for (auto& entry : domains_) entry.first->ReleaseCustomOpDomain(entry.second);
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<const OrtApi*, OrtCustomOpDomain*>> domains_;
};

DomainKeeper domain_keeper;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    const std::string message = std::string("megaportraits custom ops need onnxruntime >= 1.17, this is ") +
                                api_base->GetVersionString() + "; upgrade onnxruntime";
    return oldest->CreateStatus(ORT_FAIL, message.c_str());
  }
  registered_api.store(api);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(kDomain, &domain)) return status;
  domain_keeper.keep(api, domain);
  size_t flavours = kCpuFlavours;
#if defined(MEGAPORTRAITS_WITH_CUDA)
  if (runtime_has_cuda(api)) flavours = kAllFlavours;
#endif
  for (size_t i = 0; i < flavours; ++i) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, &kFlavourOps[i])) return status;
  }
  if (OrtStatus* status = api->CustomOpDomain_Add(domain, &kDequantizeInstanceNormOp)) return status;
  return api->AddCustomOpDomain(options, domain);
}
