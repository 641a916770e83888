// GradReducer: data-parallel gradient averaging in buckets, overlapped with
// backward, and ZeRO-1 (optimizer state sharded over ranks).
//
// Buckets. Parameters are packed into flat buffers in *reverse* registration
// order (roughly the order backward finishes them), each bucket up to
// dist.bucket_mb (a parameter bigger than that gets a bucket of its own).
// Every parameter's gradient becomes a view into its bucket (offsets aligned
// to 64 elements, so vectorized kernels stay aligned), so backward
// accumulates straight into the buffer that is reduced: no copies.
//
// Overlap. The reducer installs a grad-ready hook on the model
// (nn::Module::grads_ready). Armed for the last micro-batch of a step, it
// counts each parameter's signals; when every parameter of a bucket is final
// the bucket's collective is launched (async: a communication thread on the
// CPU, the communication stream on the GPU) while backward goes on. Buckets
// launch strictly in index order, so every rank issues the same sequence.
// How many signals make a parameter final is learned in the first armed
// backward (a tied weight is signalled once per use), in which nothing
// launches early; later steps check the counts and throw naming a parameter
// whose count changed. Parameters whose module never signals simply make
// their bucket wait for finish().
//
// ZeRO-1 (zero_stage 1). Each bucket is padded to a multiple of world × 64
// elements and split into world equal chunks; rank r owns chunk r of every
// bucket. Gradients are reduce-scattered (each rank receives the mean of its
// chunks), the optimizer runs over this rank's *segments* — the pieces of
// each parameter inside its chunks, as 1-D Parameters named
// "<param>@<offset>" with the parameter's decay flag — so its moments exist
// only for 1/world of the model, and the updated chunks are all-gathered
// back into every rank's full parameters. Checkpoints still hold the full,
// per-parameter optimizer state (gather_state), so they load into any
// process count, sharded or not.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nn/module.h"
#include "nn/optimizer.h"
#include "runtime/communicator.h"

namespace kiln {

struct GradReducerOptions {
  double bucket_mb = 25;  ///< dist.bucket_mb
  int zero_stage = 0;     ///< 0: all-reduce (replicated optimizer), 1: ZeRO-1
};

class GradReducer {
 public:
  /// `params` in registration order (model.trainable_parameters(): frozen
  /// ones have no gradient and are never reduced); all on one device with
  /// one gradient dtype. Re-points every p->grad into a bucket (values kept)
  /// and installs the hook on `model`. Collective-free.
  GradReducer(nn::Module& model, std::vector<nn::Parameter*> params, Communicator& comm,
              const GradReducerOptions& opt);
  /// Removes the hook (gradients stay views of the buckets).
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  /// Call before the last micro-batch's backward of a step: from then on a
  /// bucket launches as soon as its gradients are final.
  void arm();
  /// After the last backward: launches the buckets still waiting and waits
  /// for all. Stage 0: every gradient holds the mean over ranks. Stage 1: this
  /// rank's segments' gradients hold the mean (the full gradients do not).
  void finish();

  /// The parameters the optimizer updates on this rank: the model's (stage
  /// 0) or this rank's segments (stage 1; may be empty on a tiny model).
  const std::vector<nn::Parameter*>& optimizer_params() const { return opt_params_; }
  /// Stage 1: the optimizer's gradients are this rank's shard of the whole,
  /// so their norm is a collective over ranks (StepGuard::compute's
  /// shard_comm); stage 0: every rank holds the whole mean gradient.
  Communicator* norm_comm() { return opt_.zero_stage == 1 ? &comm_ : nullptr; }
  /// Stage 1, around optimizer.step(): before_step copies this rank's chunks
  /// of the parameters into the segments; after_step all-gathers the updated
  /// chunks into every rank's parameters (and refreshes bf16 copies).
  /// No-ops in stage 0.
  void before_step();
  void after_step();

  /// The optimizer state as per-parameter tensors named as nn::Optimizer
  /// names them for the full model ("layers.0.weight.exp_avg"), for
  /// checkpoints. Stage 0: `opt.state()`. Stage 1: collective (all-gather);
  /// every rank gets the full state, on the parameters' device.
  std::vector<std::pair<std::string, Tensor>> gather_state(const nn::Optimizer& opt, const nn::OptimizerOptions& o);
  /// The full state's names and shapes (what gather_state returns), to read
  /// a checkpoint by.
  std::vector<std::pair<std::string, Shape>> state_layout(const nn::OptimizerOptions& o) const;
  /// Loads full per-parameter state (host or device tensors, as named by
  /// state_layout) into `opt`: stage 0 directly, stage 1 this rank's slices.
  void load_state(nn::Optimizer& opt, const std::map<std::string, Tensor>& full, int64_t steps);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int zero_stage() const { return opt_.zero_stage; }
  /// "3 buckets (0.94 MB), all-reduce" for the start-up log.
  std::string describe() const;

 private:
  struct Slot {
    nn::Parameter* param = nullptr;
    int bucket = 0;
    int64_t offset = 0;  // elements into the bucket
    int64_t numel = 0;
    int expected = 0;    // grads_ready signals per backward (learned)
    int seen = 0;
  };
  struct Segment {
    int slot = 0;
    int64_t begin = 0;  // element offset within the parameter
    int64_t len = 0;
  };
  struct Bucket {
    std::vector<int> slots;
    int64_t numel = 0;  // padded
    Tensor grad;        // (numel) flat gradients; the parameters' grads are views
    Tensor shard_grad;  // stage 1: (numel / world) reduce-scatter result
    Tensor values;      // stage 1: (numel) flat parameter values for the all-gather
    int waiting = 0;    // parameters not final yet in this backward
    bool can_launch_early = false;
    bool ready = false;
    std::unique_ptr<CommHandle> handle;
  };

  void on_grad_ready(nn::Parameter& p);
  void launch(int b);
  void launch_ready_in_order();
  int64_t chunk(const Bucket& b) const { return b.numel / comm_.world(); }
  static std::vector<std::string> state_suffixes(const nn::OptimizerOptions& o);

  nn::Module& model_;
  Communicator& comm_;
  GradReducerOptions opt_;
  std::vector<nn::Parameter*> params_;
  std::vector<Slot> slots_;
  std::unordered_map<nn::Parameter*, int> slot_of_;
  std::vector<Bucket> buckets_;
  std::vector<Segment> segments_;
  std::vector<std::unique_ptr<nn::Parameter>> segment_params_;
  std::vector<nn::Parameter*> opt_params_;
  bool armed_ = false;
  bool calibrated_ = false;
  int next_launch_ = 0;
};

}  // namespace kiln
