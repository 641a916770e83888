// conv2d_*() on the GPU through cuDNN 9's backend API (see conv.h, cudnn.h).
//
// Each (operation, geometry, dtype, pointer alignments, accumulate, engine
// policy) gets one operation graph — a single convolution node over NHWC
// tensors and KRSC filters — and one execution plan, chosen once from the
// heuristics (mode A, then the fallback list) and cached per device for the
// life of the process. Tensors are described in cuDNN's (N, C, H, W) dimension
// order with channels-last strides; filters as (K, C/G, R, S) with strides of
// the KRSC layout, so cuDNN infers the group count from C and the filter's
// channel count. Workspace comes from kiln's caching allocator on the compute
// stream, stream-ordered like the cuBLASLt workspace.
//
// Not in the graph: the bias add (kernels/activation.h bias_add_forward on the
// (N·P·Q, K) output) and dbias (bias_backward, a fixed-order reduction) —
// kiln's layers put BatchNorm after their convolutions and use no conv bias,
// so a fused conv+bias graph (whose engine coverage is narrower) buys little.
// bf16 activations with an fp32 dw: cuDNN computes dw in bf16 (fp32
// accumulation inside) into a temporary, which is widened and added to dw.
//
// Status: compiled for sm_90a against cuDNN 9.19; never run on a GPU yet.
#include "runtime/conv_detail.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "kernels/activation.h"
#include "kernels/cast.h"
#include "runtime/allocator.h"
#include "runtime/cudnn.h"
#include "runtime/device_guard.h"
#include "runtime/error.h"

namespace kiln::detail {
namespace {

// Unique ids of the graph's tensors (the variant pack refers to them).
constexpr int64_t kUidA = 'a', kUidB = 'b', kUidOut = 'o';

struct PlanKey {
  int64_t v[24];
  bool operator==(const PlanKey& o) const { return std::memcmp(v, o.v, sizeof v) == 0; }
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (int64_t x : k.v) {
      h ^= static_cast<uint64_t>(x);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

struct PlanCache {
  std::mutex mu;
  std::unordered_map<PlanKey, std::shared_ptr<cudnn::Plan>, PlanKeyHash> plans;
};

PlanCache& cache_for(int device) {
  static std::mutex mu;
  static std::unordered_map<int, PlanCache*> caches;  // process lifetime, like the handles
  std::lock_guard<std::mutex> lock(mu);
  auto it = caches.find(device);
  if (it == caches.end()) it = caches.emplace(device, new PlanCache).first;
  return *it->second;
}

cudnnDataType_t cudnn_type(DType t) { return t == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }

// The alignment (power of two, at most 16 bytes) of a device pointer.
int64_t alignment(const void* p) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(p) | 16u;
  return static_cast<int64_t>(bits & (~bits + 1));
}

// A channels-last tensor (n, c, h, w) in cuDNN's dimension order.
cudnn::Descriptor nhwc_tensor(int64_t uid, DType t, int64_t n, int64_t c, int64_t h, int64_t w, int64_t align,
                              const char* what) {
  cudnn::Descriptor d(CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
  const cudnnDataType_t dt = cudnn_type(t);
  d.set(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &dt);
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), {n, c, h, w});
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_STRIDES), {h * w * c, 1, w * c, c});
  d.set_int64(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), uid);
  d.set_int64(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), align);
  d.finalize();
  return d;
}

cudnn::Descriptor conv_descriptor(const Conv2dGeometry& g) {
  cudnn::Descriptor d(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, "convolution");
  const cudnnDataType_t acc = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  d.set_int64(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS), 2);
  d.set(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_COMP_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &acc);
  d.set(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_CONV_MODE), CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS), {g.pad_h, g.pad_w});
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS), {g.pad_h, g.pad_w});
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_DILATIONS), {g.dilation_h, g.dilation_w});
  d.set_int64s(KILN_CUDNN_ATTR(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES), {g.stride_h, g.stride_w});
  d.finalize();
  return d;
}

// Builds (or finds) the plan for `op`. a/b/out are the op's two inputs and its
// output, in the order of conv_detail.h's signatures.
std::shared_ptr<cudnn::Plan> plan_for(ConvOp op, const Conv2dGeometry& g, DType t, float beta, const void* a,
                                      const void* b, const void* out, int device) {
  const int64_t al_a = alignment(a), al_b = alignment(b), al_o = alignment(out);
  const bool det = conv_deterministic();
  const PlanKey key{{static_cast<int64_t>(op), g.n, g.h, g.w, g.c, g.k, g.r, g.s, g.stride_h, g.stride_w, g.pad_h,
                     g.pad_w, g.dilation_h, g.dilation_w, g.groups, static_cast<int64_t>(t), beta != 0.0f, al_a,
                     al_b, al_o, det, 0, 0, 0}};
  PlanCache& cache = cache_for(device);
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.plans.find(key);
    if (it != cache.plans.end()) return it->second;
  }

  const int64_t P = g.out_h(), Q = g.out_w(), Cg = g.c / g.groups;
  // Tensors by role; the uids follow the argument order (a, b, out).
  auto x_desc = [&](int64_t uid, int64_t al) { return nhwc_tensor(uid, t, g.n, g.c, g.h, g.w, al, "x (N, H, W, C)"); };
  auto y_desc = [&](int64_t uid, int64_t al) { return nhwc_tensor(uid, t, g.n, g.k, P, Q, al, "y (N, P, Q, K)"); };
  auto w_desc = [&](int64_t uid, int64_t al) {
    return nhwc_tensor(uid, t, g.k, Cg, g.r, g.s, al, "w (K, R, S, C/G)");  // KRSC = "NHWC" filters
  };
  // The op's inputs a, b and output, by role.
  cudnn::Descriptor da, db, dout;
  switch (op) {
    case ConvOp::forward:
      da = x_desc(kUidA, al_a); db = w_desc(kUidB, al_b); dout = y_desc(kUidOut, al_o);
      break;
    case ConvOp::backward_data:
      da = y_desc(kUidA, al_a); db = w_desc(kUidB, al_b); dout = x_desc(kUidOut, al_o);
      break;
    case ConvOp::backward_filter:
      da = x_desc(kUidA, al_a); db = y_desc(kUidB, al_b); dout = w_desc(kUidOut, al_o);
      break;
  }
  cudnn::Descriptor conv = conv_descriptor(g);
  const float alpha = 1.0f;
  cudnn::Descriptor node;
  switch (op) {
    case ConvOp::forward:
      node = cudnn::Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, "convolution forward");
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC), conv);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X), da);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W), db);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y), dout);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA), CUDNN_TYPE_FLOAT, 1, &alpha);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA), CUDNN_TYPE_FLOAT, 1, &beta);
      break;
    case ConvOp::backward_data:
      node = cudnn::Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
                               "convolution backward data");
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC), conv);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY), da);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W), db);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX), dout);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA), CUDNN_TYPE_FLOAT, 1, &alpha);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA), CUDNN_TYPE_FLOAT, 1, &beta);
      break;
    case ConvOp::backward_filter:
      node = cudnn::Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
                               "convolution backward filter");
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC), conv);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X), da);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY), db);
      node.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW), dout);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA), CUDNN_TYPE_FLOAT, 1, &alpha);
      node.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA), CUDNN_TYPE_FLOAT, 1, &beta);
      break;
  }
  node.finalize();
  cudnnHandle_t h = cudnn::handle(device);
  cudnn::Descriptor graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  cudnnBackendDescriptor_t raw_node = node.get();
  graph.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw_node);
  graph.set(KILN_CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), CUDNN_TYPE_HANDLE, 1, &h);
  graph.finalize();

  cudnn::EnginePolicy policy;
  policy.deterministic = det;
  policy.fp32_data = t == DType::f32;
  std::ostringstream what;
  what << conv_op_name(op) << " (" << g.str() << ", " << dtype_name(t) << ")";
  auto plan = std::make_shared<cudnn::Plan>(cudnn::choose_plan(h, graph, policy, what.str()));
  for (cudnn::Descriptor* d : {&graph, &node, &conv, &da, &db, &dout}) plan->owned.push_back(std::move(*d));
  std::lock_guard<std::mutex> lock(cache.mu);
  return cache.plans.emplace(key, plan).first->second;
}

void run(ConvOp op, const Conv2dGeometry& g, DType t, float beta, const void* a, const void* b, void* out,
         Device device, cudaStream_t stream) {
  std::shared_ptr<cudnn::Plan> plan = plan_for(op, g, t, beta, a, b, out, device.index);
  CachingAllocator& alloc = allocator_for(device);
  void* ws = plan->workspace > 0 ? alloc.allocate(static_cast<size_t>(plan->workspace), stream) : nullptr;
  try {
    cudnn::execute(device.index, stream, *plan, {kUidA, kUidB, kUidOut},
                   {const_cast<void*>(a), const_cast<void*>(b), out}, ws);
  } catch (...) {
    alloc.free(ws);
    throw;
  }
  alloc.free(ws);  // stream-ordered: the next user of the block runs after the convolution
}

// RAII scratch from the caching allocator on one stream.
struct Scratch {
  CachingAllocator& alloc;
  void* p;
  Scratch(Device d, size_t bytes, cudaStream_t s) : alloc(allocator_for(d)), p(alloc.allocate(bytes, s)) {}
  ~Scratch() { alloc.free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace

void cuda_conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias,
                         void* y, Device device, cudaStream_t stream) {
  const int64_t yn = g.y_numel();
  if (yn == 0) return;
  CudaDeviceGuard guard(device.index);
  if (g.c == 0) {  // no inputs: y = bias or 0, without cuDNN (it rejects empty reductions)
    KILN_CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(yn) * dtype_size(dtype), stream));
  } else {
    run(ConvOp::forward, g, dtype, 0.0f, x, w, y, device, stream);
  }
  if (bias) {
    const int64_t rows = g.n * g.out_h() * g.out_w();
    if (dtype == DType::bf16)
      bias_add_forward(static_cast<bf16*>(y), static_cast<const bf16*>(y), static_cast<const float*>(bias), rows, g.k,
                       stream);
    else
      bias_add_forward(static_cast<float*>(y), static_cast<const float*>(y), static_cast<const float*>(bias), rows,
                       g.k, stream);
  }
}

void cuda_conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx,
                               Device device, cudaStream_t stream) {
  const int64_t xn = g.x_numel();
  if (xn == 0) return;
  CudaDeviceGuard guard(device.index);
  if (g.k == 0) {
    KILN_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<size_t>(xn) * dtype_size(dtype), stream));
    return;
  }
  run(ConvOp::backward_data, g, dtype, 0.0f, dy, w, dx, device, stream);
}

void cuda_conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                                 DType dw_dtype, bool accumulate, void* dbias, Device device, cudaStream_t stream) {
  CudaDeviceGuard guard(device.index);
  const int64_t rows = g.n * g.out_h() * g.out_w();
  if (dbias && rows > 0 && g.k > 0) {
    if (dtype == DType::bf16) bias_backward(static_cast<float*>(dbias), static_cast<const bf16*>(dy), rows, g.k, stream);
    else bias_backward(static_cast<float*>(dbias), static_cast<const float*>(dy), rows, g.k, stream);
  }
  const int64_t wn = g.w_numel();
  if (wn == 0) return;
  if (g.n == 0) {  // no samples: the gradient is 0
    if (!accumulate) KILN_CUDA_CHECK(cudaMemsetAsync(dw, 0, static_cast<size_t>(wn) * dtype_size(dw_dtype), stream));
    return;
  }
  if (dw_dtype == dtype) {
    run(ConvOp::backward_filter, g, dtype, accumulate ? 1.0f : 0.0f, x, dy, dw, device, stream);
    return;
  }
  // bf16 activations, fp32 dw: bf16 temporary, widened (and added).
  Scratch tmp16(device, static_cast<size_t>(wn) * sizeof(bf16), stream);
  run(ConvOp::backward_filter, g, dtype, 0.0f, x, dy, tmp16.p, device, stream);
  float* out = static_cast<float*>(dw);
  if (!accumulate) {
    cast_forward(static_cast<const bf16*>(tmp16.p), out, wn, stream);
    return;
  }
  Scratch tmp32(device, static_cast<size_t>(wn) * sizeof(float), stream);
  cast_forward(static_cast<const bf16*>(tmp16.p), static_cast<float*>(tmp32.p), wn, stream);
  residual_add(out, out, static_cast<const float*>(tmp32.p), wn, stream);
}

}  // namespace kiln::detail

#endif  // KILN_WITH_CUDA
