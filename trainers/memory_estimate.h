// How much memory a training run will need, worked out from the config and
// the data's shape before the model exists, so that an absurd size
// (model.mlp.hidden=[1048576, 1048576], a GPT of n_embd 65536) stops at once
// with exit 2 naming the keys and the numbers instead of allocating for half
// a minute and failing with an out-of-memory error that names nothing.
//
//   training memory = weights (fp32 masters, + bf16 copies on the GPU in bf16)
//                   + buffers (BatchNorm statistics)
//                   + gradients (fp32, trainable parameters)
//                   + optimizer state (AdamW: 2 moments; SGD: momentum, if any;
//                     divided over the processes under ZeRO-1)
//                   + activations kept for backward (per example x micro-batch,
//                     in the compute dtype)
//
// The parameter count is exact (the registry's size hook mirrors each
// model's constructor; tests check it against the built module). The
// activation count is an estimate: the tensors each module keeps for its
// backward, without the transient buffers of one op, so the total is a floor
// of what the run needs, and a run whose floor does not fit cannot run.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/device.h"
#include "trainers/config.h"
#include "trainers/models.h"
#include "trainers/task.h"

namespace kiln {

/// A run's memory, in bytes per process.
struct MemoryEstimate {
  int64_t parameters = 0;  ///< every parameter of the model
  int64_t batch = 0;       ///< examples per micro-batch (train.batch_size)
  double weights = 0;      ///< parameters (+ low-precision copies) and buffers
  double gradients = 0;
  double optimizer = 0;
  double activations = 0;
  bool activations_known = true;  ///< false: the model type registers no size hook
  std::string keys;               ///< the config keys that drive the size, with their values
  double total() const { return weights + gradients + optimizer + activations; }
};

/// The estimate for `size` (from the model type's size hook) under the
/// run's optimizer, precision on `device`, micro-batch and process count.
MemoryEstimate estimate_training_memory(const TrainConfig& cfg, const ModelSize& size, Device device,
                                        const BatchPlan& plan, int world);

/// Memory a process may use on `device`: the GPU's free memory, or the
/// host's MemAvailable (/proc/meminfo) shared by the node's `processes`.
struct MemoryAvailable {
  double bytes = 0;    ///< <= 0: unknown (nothing is refused)
  std::string where;   ///< "cuda:0 (free device memory)", "the host (MemAvailable in /proc/meminfo, ...)"
};
MemoryAvailable memory_available(Device device, int processes);

/// One line: "memory estimate 1.2 GiB per process: weights ..., gradients
/// ..., optimizer state ..., activations ... (train.batch_size 32)".
std::string describe_memory(const MemoryEstimate& e);

/// InputError when the estimate exceeds what is available, naming the keys
/// that drive it and the numbers.
void check_memory_fits(const MemoryEstimate& e, const MemoryAvailable& avail);

/// "12.3 MiB", "4.0 TiB" (binary units).
std::string format_memory(double bytes);

/// While one is alive on a thread, build_model on that thread checks the
/// training memory of the model it is about to build, before the factory
/// allocates anything: it prints the parameter count and the estimate, and
/// throws check_memory_fits's InputError when it does not fit. The trainer
/// holds one around building its task, which owns the data's shape (known
/// only after the data is opened) and calls build_model; kiln eval, sample
/// and export build models without one (they need no gradients or optimizer
/// state). A model type without a size hook is counted after it is built,
/// from the module, activations unknown.
class TrainingMemoryCheck {
 public:
  TrainingMemoryCheck(Device device, const BatchPlan& plan, int world, int processes_on_host, bool announce);
  ~TrainingMemoryCheck();
  TrainingMemoryCheck(const TrainingMemoryCheck&) = delete;
  TrainingMemoryCheck& operator=(const TrainingMemoryCheck&) = delete;

  /// The innermost check alive on this thread, or nullptr.
  static const TrainingMemoryCheck* active();

  /// Estimates, prints (when announcing) and checks; returns the estimate.
  MemoryEstimate check(const TrainConfig& cfg, const ModelSize& size) const;

 private:
  Device device_;
  BatchPlan plan_;
  int world_, processes_;
  bool announce_;
  const TrainingMemoryCheck* outer_;
};

}  // namespace kiln
