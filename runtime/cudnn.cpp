// The cuDNN backend-API wrapper (see cudnn.h).
//
// Status: compiled for sm_90a against cuDNN 9.19; never run on a GPU yet.
#include "runtime/cudnn.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <unordered_map>

#include "runtime/device_guard.h"

namespace kiln::cudnn {
namespace {

struct DeviceHandle {
  cudnnHandle_t h = nullptr;
  std::mutex mu;  // cudnnSetStream + execute
};

DeviceHandle& device_handle(int device) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceHandle*> handles;  // never destroyed: the process owns them to the end
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(device);
  if (it == handles.end()) {
    detail::CudaDeviceGuard guard(device);  // cudnnCreate binds the handle to the current device
    auto* dh = new DeviceHandle;
    KILN_CUDNN_CHECK(cudnnCreate(&dh->h));
    it = handles.emplace(device, dh).first;
  }
  return *it->second;
}

// Throws Error naming the cuDNN function, the attribute and the descriptor.
[[noreturn]] void fail(const char* fn, const char* attr, const std::string& what, cudnnStatus_t s, const char* file,
                       int line) {
  std::ostringstream call;
  call << fn << "(" << what;
  if (attr) call << ", " << attr;
  call << ")";
  ::kiln::detail::fail_cudnn(call.str().c_str(), static_cast<int>(s), file, line);
}

}  // namespace

cudnnHandle_t handle(int device) { return device_handle(device).h; }
std::mutex& handle_mutex(int device) { return device_handle(device).mu; }

Descriptor::Descriptor(cudnnBackendDescriptorType_t type, const char* what) : what_(what) {
  const cudnnStatus_t s = cudnnBackendCreateDescriptor(type, &d_);
  if (s != CUDNN_STATUS_SUCCESS) {
    d_ = nullptr;
    fail("cudnnBackendCreateDescriptor", nullptr, what_, s, __FILE__, __LINE__);
  }
}

Descriptor::~Descriptor() {
  if (d_) {
    const cudnnStatus_t s = cudnnBackendDestroyDescriptor(d_);
    if (s != CUDNN_STATUS_SUCCESS)
      std::fprintf(stderr, "kiln: warning: cudnnBackendDestroyDescriptor(%s) failed: %s\n", what_.c_str(),
                   cudnnGetErrorString(s));
  }
}

Descriptor::Descriptor(Descriptor&& o) noexcept : d_(o.d_), what_(std::move(o.what_)) { o.d_ = nullptr; }

Descriptor& Descriptor::operator=(Descriptor&& o) noexcept {
  if (this != &o) {
    if (d_) cudnnBackendDestroyDescriptor(d_);
    d_ = o.d_;
    what_ = std::move(o.what_);
    o.d_ = nullptr;
  }
  return *this;
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t attr, const char* name, cudnnBackendAttributeType_t type,
                            int64_t count, const void* values) {
  const cudnnStatus_t s = cudnnBackendSetAttribute(d_, attr, type, count, values);
  if (s != CUDNN_STATUS_SUCCESS) fail("cudnnBackendSetAttribute", name, what_, s, __FILE__, __LINE__);
  return *this;
}

Descriptor& Descriptor::set_int64(cudnnBackendAttributeName_t attr, const char* name, int64_t v) {
  return set(attr, name, CUDNN_TYPE_INT64, 1, &v);
}

Descriptor& Descriptor::set_int64s(cudnnBackendAttributeName_t attr, const char* name, const std::vector<int64_t>& v) {
  return set(attr, name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
}

Descriptor& Descriptor::set_desc(cudnnBackendAttributeName_t attr, const char* name, const Descriptor& v) {
  cudnnBackendDescriptor_t raw = v.get();
  return set(attr, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
}

void Descriptor::finalize() {
  const cudnnStatus_t s = cudnnBackendFinalize(d_);
  if (s != CUDNN_STATUS_SUCCESS) fail("cudnnBackendFinalize", nullptr, what_, s, __FILE__, __LINE__);
}

cudnnStatus_t Descriptor::try_finalize() { return cudnnBackendFinalize(d_); }

int64_t Descriptor::get(cudnnBackendAttributeName_t attr, const char* name, cudnnBackendAttributeType_t type,
                        int64_t requested, void* values) const {
  int64_t count = 0;
  const cudnnStatus_t s = cudnnBackendGetAttribute(d_, attr, type, requested, &count, values);
  if (s != CUDNN_STATUS_SUCCESS) fail("cudnnBackendGetAttribute", name, what_, s, __FILE__, __LINE__);
  return count;
}

const char* numerical_note_name(cudnnBackendNumericalNote_t n) {
  switch (n) {
    case CUDNN_NUMERICAL_NOTE_TENSOR_CORE: return "TENSOR_CORE";
    case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: return "DOWN_CONVERT_INPUTS";
    case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: return "REDUCED_PRECISION_REDUCTION";
    case CUDNN_NUMERICAL_NOTE_FFT: return "FFT";
    case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: return "NONDETERMINISTIC";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD: return "WINOGRAD";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4: return "WINOGRAD_TILE_4x4";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6: return "WINOGRAD_TILE_6x6";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13: return "WINOGRAD_TILE_13x13";
    case CUDNN_NUMERICAL_NOTE_STRICT_NAN_PROP: return "STRICT_NAN_PROP";
    default: return "?";
  }
}

namespace {

// The engine configurations the heuristics propose in `mode` (possibly none).
std::vector<Descriptor> heuristic_configs(const Descriptor& graph, cudnnBackendHeurMode_t mode, const char* mode_name) {
  Descriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, mode_name);
  heur.set_desc(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), graph);
  heur.set(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, &mode);
  if (heur.try_finalize() != CUDNN_STATUS_SUCCESS) return {};
  const int64_t count = heur.get(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_RESULTS), CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                 nullptr);
  if (count <= 0) return {};
  std::vector<Descriptor> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    raw.push_back(configs.back().get());
  }
  const int64_t got = heur.get(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_RESULTS), CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                               raw.data());
  configs.resize(static_cast<size_t>(std::min(got, count)));
  return configs;
}

}  // namespace

Plan choose_plan(cudnnHandle_t h, const Descriptor& graph, const EnginePolicy& policy, const std::string& what) {
  std::unordered_map<std::string, int> refused;  // reason -> count
  int failed_finalize = 0, seen = 0;
  const std::pair<cudnnBackendHeurMode_t, const char*> modes[] = {{CUDNN_HEUR_MODE_A, "heuristics (mode A)"},
                                                                  {CUDNN_HEUR_MODE_FALLBACK, "heuristics (fallback)"}};
  for (const auto& [mode, mode_name] : modes) {
    for (Descriptor& cfg : heuristic_configs(graph, mode, mode_name)) {
      ++seen;
      Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
      cudnnBackendDescriptor_t raw_engine = engine.get();
      cfg.get(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINECFG_ENGINE), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw_engine);
      cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
      const int64_t n_notes = engine.get(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINE_NUMERICAL_NOTE), CUDNN_TYPE_NUMERICAL_NOTE,
                                         CUDNN_NUMERICAL_NOTE_TYPE_COUNT, notes);
      const char* reason = nullptr;
      for (int64_t i = 0; i < std::min<int64_t>(n_notes, CUDNN_NUMERICAL_NOTE_TYPE_COUNT) && !reason; ++i) {
        const cudnnBackendNumericalNote_t n = notes[i];
        if (policy.deterministic && n == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) reason = "NONDETERMINISTIC";
        if (policy.fp32_data && !policy.allow_tf32 &&
            (n == CUDNN_NUMERICAL_NOTE_TENSOR_CORE || n == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS))
          reason = numerical_note_name(n);
        if (policy.fp32_accumulate && n == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)
          reason = "REDUCED_PRECISION_REDUCTION";
      }
      if (reason) {
        ++refused[reason];
        continue;
      }
      Plan p;
      p.plan = Descriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
      p.plan.set(KILN_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), CUDNN_TYPE_HANDLE, 1, &h);
      cudnnBackendDescriptor_t raw_cfg = cfg.get();
      p.plan.set(KILN_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw_cfg);
      if (p.plan.try_finalize() != CUDNN_STATUS_SUCCESS) {
        ++failed_finalize;
        continue;
      }
      p.plan.get(KILN_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE), CUDNN_TYPE_INT64, 1, &p.workspace);
      if (p.workspace > policy.max_workspace) {
        ++refused["workspace above the limit"];
        continue;
      }
      engine.get(KILN_CUDNN_ATTR(CUDNN_ATTR_ENGINE_GLOBAL_INDEX), CUDNN_TYPE_INT64, 1, &p.engine_index);
      p.owned.push_back(std::move(cfg));
      p.owned.push_back(std::move(engine));
      return p;
    }
  }
  std::ostringstream os;
  os << what << ": cuDNN offers no usable engine (" << seen << " configurations proposed";
  for (const auto& [why, n] : refused) os << ", " << n << " refused as " << why;
  if (failed_finalize) os << ", " << failed_finalize << " failed to build a plan";
  os << ")";
  if (refused.count("NONDETERMINISTIC")) os << "; set_conv_deterministic(false) allows non-deterministic engines";
  throw Error(os.str());
}

void execute(int device, cudaStream_t stream, const Plan& plan, const std::vector<int64_t>& uids,
             const std::vector<void*>& ptrs, void* workspace) {
  KILN_CHECK(uids.size() == ptrs.size(), "cudnn::execute: " << uids.size() << " uids for " << ptrs.size() << " pointers");
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  pack.set(KILN_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
           uids.data());
  pack.set(KILN_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(ptrs.size()), ptrs.data());
  pack.set(KILN_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  DeviceHandle& dh = device_handle(device);
  std::lock_guard<std::mutex> lock(dh.mu);
  KILN_CUDNN_CHECK(cudnnSetStream(dh.h, stream));
  KILN_CUDNN_CHECK(cudnnBackendExecute(dh.h, plan.plan.get(), pack.get()));
}

}  // namespace kiln::cudnn

#endif  // KILN_WITH_CUDA
