// A small RAII layer over cuDNN 9's graph/backend API (cudnn_graph.h): one
// handle per device, an owning backend descriptor with checked setters and
// getters that name the attribute that failed, and engine selection from the
// heuristics with kiln's numerical policy. Used by runtime/conv_cuda.cpp; CUDA
// build only.
//
// The legacy cudnnConvolution* API is deprecated in cuDNN 9; the backend API
// works in terms of an operation graph (here: one convolution node), engine
// configurations proposed by the heuristics, and an execution plan built from
// one of them, executed with a variant pack of device pointers.
#pragma once

#if KILN_WITH_CUDA
#include <cudnn_graph.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace kiln::cudnn {

/// The cuDNN handle of CUDA device `device`, created on first use and kept for
/// the life of the process. Callers set its stream (cudnnSetStream) under
/// handle_mutex(device) right before executing.
cudnnHandle_t handle(int device);
/// Serializes cudnnSetStream + cudnnBackendExecute on one device's handle.
std::mutex& handle_mutex(int device);

/// Passes an attribute and its name to Descriptor's setters and getters:
/// d.set(KILN_CUDNN_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), ...).
#define KILN_CUDNN_ATTR(attr) attr, #attr

/// Owns one cudnnBackendDescriptor_t (destroyed without throwing).
class Descriptor {
 public:
  Descriptor() = default;
  explicit Descriptor(cudnnBackendDescriptorType_t type, const char* what);
  ~Descriptor();
  Descriptor(Descriptor&& o) noexcept;
  Descriptor& operator=(Descriptor&& o) noexcept;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  bool defined() const { return d_ != nullptr; }
  const std::string& what() const { return what_; }

  /// cudnnBackendSetAttribute, checked; the error names `name` and this descriptor.
  Descriptor& set(cudnnBackendAttributeName_t attr, const char* name, cudnnBackendAttributeType_t type, int64_t count,
                  const void* values);
  Descriptor& set_int64(cudnnBackendAttributeName_t attr, const char* name, int64_t v);
  Descriptor& set_int64s(cudnnBackendAttributeName_t attr, const char* name, const std::vector<int64_t>& v);
  Descriptor& set_desc(cudnnBackendAttributeName_t attr, const char* name, const Descriptor& v);
  /// cudnnBackendFinalize, checked.
  void finalize();
  /// cudnnBackendFinalize, returning the status (engines that do not support a
  /// graph fail here, and the caller tries the next).
  cudnnStatus_t try_finalize();
  /// cudnnBackendGetAttribute, checked; returns the element count.
  int64_t get(cudnnBackendAttributeName_t attr, const char* name, cudnnBackendAttributeType_t type,
              int64_t requested, void* values) const;

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  std::string what_;
};

/// Which engine configurations kiln accepts.
struct EnginePolicy {
  bool deterministic = true;       ///< refuse CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC
  bool allow_tf32 = false;         ///< fp32 data: false refuses TENSOR_CORE / DOWN_CONVERT_INPUTS engines
  bool fp32_data = true;           ///< the graph's tensors are fp32 (TF32 policy applies)
  bool fp32_accumulate = true;     ///< refuse REDUCED_PRECISION_REDUCTION
  int64_t max_workspace = int64_t(1) << 30;  ///< bytes
};

/// An execution plan chosen for a finalized operation graph.
struct Plan {
  Descriptor plan;
  int64_t workspace = 0;
  int64_t engine_index = -1;  ///< CUDNN_ATTR_ENGINE_GLOBAL_INDEX (for messages and logs)
  /// Descriptors the plan was built from (engine config, engine, graph,
  /// operation, tensors), kept alive with it as the cuDNN frontend does.
  std::vector<Descriptor> owned;
};

/// Runs the heuristics (CUDNN_HEUR_MODE_A, then CUDNN_HEUR_MODE_FALLBACK) on
/// `graph`, drops configurations the policy refuses, and returns the plan of
/// the first one that finalizes. Throws Error naming `what` and how many
/// configurations were refused and why when none is usable.
Plan choose_plan(cudnnHandle_t h, const Descriptor& graph, const EnginePolicy& policy, const std::string& what);

/// Executes `plan` on `stream` with the tensors (uids[i] -> ptrs[i]) and a
/// workspace of at least plan.workspace bytes.
void execute(int device, cudaStream_t stream, const Plan& plan, const std::vector<int64_t>& uids,
             const std::vector<void*>& ptrs, void* workspace);

/// The CUDNN_NUMERICAL_NOTE_* name ("NONDETERMINISTIC", ...).
const char* numerical_note_name(cudnnBackendNumericalNote_t n);

}  // namespace kiln::cudnn

#endif  // KILN_WITH_CUDA
