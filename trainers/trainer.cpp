#include "trainers/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "nn/optimizer.h"
#include "nn/schedule.h"
#include "runtime/atomic_file.h"
#include "runtime/blas.h"
#include "runtime/communicator.h"
#include "runtime/parallel.h"
#include "runtime/process_info.h"
#include "runtime/stream.h"
#include "trainers/checkpoint.h"
#include "trainers/grad_reducer.h"
#include "trainers/memory_estimate.h"
#include "trainers/lora_checkpoint.h"
#include "trainers/metrics.h"
#include "trainers/models.h"
#include "trainers/run_checkpoint.h"
#include "trainers/step_guard.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

nn::OptimizerOptions optimizer_options(const TrainConfig& c) {
  nn::OptimizerOptions o;
  o.kind = c.optim.type == OptimizerType::adamw ? nn::OptimizerKind::adamw : nn::OptimizerKind::sgd;
  o.weight_decay = c.optim.weight_decay;
  o.beta1 = c.optim.beta1;
  o.beta2 = c.optim.beta2;
  o.eps = c.optim.eps;
  o.momentum = c.optim.momentum;
  o.nesterov = c.optim.nesterov;
  o.no_decay_on_bias_and_norm = c.optim.no_decay_on_bias_and_norm;
  return o;
}

nn::ScheduleConfig schedule_config(const TrainConfig& c, int64_t total_steps) {
  nn::ScheduleConfig s;
  switch (c.schedule.type) {
    case LrScheduleType::constant: s.type = nn::ScheduleType::constant; break;
    case LrScheduleType::cosine: s.type = nn::ScheduleType::cosine; break;
    case LrScheduleType::linear: s.type = nn::ScheduleType::linear; break;
    case LrScheduleType::step: s.type = nn::ScheduleType::step; break;
  }
  s.lr = c.optim.lr;
  s.warmup_steps = c.schedule.warmup_steps;
  s.total_steps = total_steps;
  s.min_lr_ratio = c.schedule.min_lr_ratio;
  s.step_size = c.schedule.step_size;
  s.gamma = c.schedule.gamma;
  return s;
}

// Dense bf16 (or fp32 when training in fp32) tensor-core peaks by name, for
// MFU; mfu.peak_tflops overrides. 0 = unknown (no MFU reported).
double peak_tflops(const TrainConfig& cfg, Device device) {
  if (cfg.mfu.peak_tflops > 0) return cfg.mfu.peak_tflops;
  if (!device.is_cuda()) return 0;
  const std::string name = cuda_device_name(device);
  const bool bf16 = cfg.precision == Precision::bf16;
  struct Peak { const char* name; double bf16, tf32; };
  // Datasheet dense rates (SXM parts): H100/H200 989 bf16 / 495 tf32,
  // A100 312 / 156.
  static const Peak table[] = {{"H200", 989, 495}, {"H100", 989, 495}, {"A100", 312, 156}};
  for (const Peak& p : table)
    if (name.find(p.name) != std::string::npos) return bf16 ? p.bf16 : p.tf32;
  return 0;
}

// threads: 0 means the CPUs this process may run on (its affinity mask: a
// container limited to 2 of 64 cores gets 2 threads, not 64).
int64_t resolve_threads(int threads) {
  if (threads > 0) return threads;
  return available_cpus();
}

// splitmix64's finalizer: rank r > 0 draws dropout masks from its own
// Philox key, derived from the run's seed (rank 0 keeps the seed itself, so a
// one-process run is unchanged).
uint64_t rank_seed(uint64_t base, int rank) {
  if (rank == 0) return base;
  uint64_t z = base ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Sums a TaskStats over ranks (identity for a world of one).
void all_reduce_stats(Communicator& comm, TaskStats& st, const char* what) {
  if (comm.world() == 1) return;
  std::vector<double> v = {st.loss_sum, static_cast<double>(st.loss_count), static_cast<double>(st.correct),
                           static_cast<double>(st.samples), static_cast<double>(st.units),
                           static_cast<double>(st.exact_match_correct), static_cast<double>(st.exact_match_total)};
  comm.all_reduce_values(v, ReduceOp::sum, what);
  st.loss_sum = v[0];
  st.loss_count = static_cast<int64_t>(v[1]);
  st.correct = static_cast<int64_t>(v[2]);
  st.samples = static_cast<int64_t>(v[3]);
  st.units = static_cast<int64_t>(v[4]);
  st.exact_match_correct = static_cast<int64_t>(v[5]);
  st.exact_match_total = static_cast<int64_t>(v[6]);
}

// The steps of the current log window, on the device until read: each
// step's loss and correct-count sums (LossStats, one row per step) and its
// norm and skip flag (copied from the StepGuard after the step), beside the
// host-known counts of its batch.
class StepRecords {
 public:
  StepRecords(Device device, int64_t capacity)
      : stats_(device, capacity),
        norms_(Tensor::zeros({capacity}, DType::f32, device, "window.grad_norms")),
        flags_(Tensor::zeros({capacity}, DType::f32, device, "window.skipped")) {}

  bool full() const { return static_cast<int64_t>(counts_.size()) == stats_.rows(); }
  bool empty() const { return counts_.empty(); }
  int64_t first_step() const { return first_; }
  int64_t pending() const { return static_cast<int64_t>(counts_.size()); }

  /// Stats of the step about to run go to its own row.
  LossStats& open(int64_t step) {
    if (counts_.empty()) first_ = step;
    stats_.select(static_cast<int64_t>(counts_.size()));
    return stats_;
  }
  /// The step's global counts, norm and flag (device copies, no wait).
  void close(const StepBatch& global, const StepGuard& guard) {
    const int64_t r = static_cast<int64_t>(counts_.size());
    norms_.view(r, {1}).copy_from(guard.norm());
    flags_.view(r, {1}).copy_from(guard.flag());
    counts_.push_back(global);
  }

  struct Step {
    TaskStats stats;  // over all ranks
    double grad_norm = 0;
    bool skipped = false;
  };
  /// The pending steps on the host, losses and correct counts summed over
  /// ranks (the window's one device wait, and one host all-reduce); resets.
  std::vector<Step> read(Communicator& comm) {
    const size_t n = counts_.size();
    std::vector<Step> out(n);
    if (n == 0) return out;
    std::vector<double> sums = stats_.read();  // waits for the device: every step of the window is done
    const std::vector<float> norms = norms_.to_vector(), flags = flags_.to_vector();
    std::vector<double> mine(2 * n);
    for (size_t i = 0; i < 2 * n; ++i) mine[i] = sums[i];
    if (comm.world() > 1) comm.all_reduce_values(mine, ReduceOp::sum, "window stats");
    for (size_t i = 0; i < n; ++i) {
      Step& s = out[i];
      s.stats.loss_sum = mine[2 * i];
      s.stats.correct = static_cast<int64_t>(mine[2 * i + 1]);
      s.stats.loss_count = counts_[i].loss_tokens;
      s.stats.samples = counts_[i].examples;
      s.stats.units = counts_[i].units;
      s.grad_norm = norms[i];
      s.skipped = flags[i] != 0.0f;
    }
    counts_.clear();
    stats_.zero();
    return out;
  }

 private:
  LossStats stats_;
  Tensor norms_, flags_;
  std::vector<StepBatch> counts_;  // global counts of each pending step
  int64_t first_ = 0;              // steps done before the first pending one
};

// A checkpoint read back: the weights are already in the model, the rest
// waits for apply_resumed. A candidate that fails to load may leave some of
// its weights (or data position) behind; the next candidate overwrites all
// of them, since it loads every tensor and the whole state.
struct Resumed {
  std::string dir;
  std::map<std::string, Tensor> opt_state;
  int64_t step = 0, optimizer_steps = 0;
  uint64_t rng_seed = 0, rng_offset = 0;
  nlohmann::json data, state;
};

// One training run: set-up, resume, the step loop and its cadences, the
// final evaluation. Each piece is one method.
class Run {
 public:
  Run(const TrainConfig& cfg, const TrainOptions& topt, const TaskContext& ctx);
  TrainResult execute();

 private:
  void announce() const;
  void resume();
  Resumed read_resumed(const std::string& dir);
  void apply_resumed(const Resumed& r);
  void broadcast_initial_state();
  void start_reporting();
  void train_step(int64_t step);
  void read_window();
  void log_window(int64_t done);
  TaskStats evaluate(Split split, int64_t step);
  void sample(int64_t step);
  void save(int64_t step);
  void message(const std::string& line) const {
    if (progress_) progress_->message(line);
  }
  void write_metrics(const nlohmann::json& line) const {
    if (metrics_) metrics_->write(line);
  }

  const TrainConfig& cfg_;
  const TrainOptions& topt_;
  TaskContext ctx_;
  Communicator& comm_;
  const bool root_;
  const Clock::time_point t_start_ = Clock::now();
  std::string run_dir_;

  std::unique_ptr<Task> task_;
  nn::Module* model_ = nullptr;
  std::vector<nn::Parameter*> trainable_;
  nn::OptimizerOptions oopt_;
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  std::unique_ptr<StepGuard> guard_;
  std::unique_ptr<StepRecords> records_;
  std::unique_ptr<nn::LrSchedule> schedule_;
  std::unique_ptr<LoraRun> lora_;  // lora.enabled: the adapters and the base they train on
  uint64_t base_seed_ = 0;
  int64_t steps_per_epoch_ = 0, total_steps_ = 0, start_step_ = 0;
  int64_t optimizer_steps_ = 0;  // updates applied, as of the last read window
  nlohmann::json resumed_state_;  // state.json of the checkpoint resumed from

  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<ConsoleReporter> progress_;
  StepReport report_;
  double peak_flops_ = 0;
  TaskStats window_;  // read steps of the current log window
  double window_norm_ = 0, window_lr_ = 0;
  Clock::time_point t_window_;
  double examples_total_ = 0, time_total_ = 0;
  TrainResult result_;
};

Run::Run(const TrainConfig& cfg, const TrainOptions& topt, const TaskContext& ctx)
    : cfg_(cfg), topt_(topt), ctx_(ctx), comm_(ctx.communicator()), root_(ctx.is_root()), run_dir_(cfg.output_dir) {
  if (cfg.precision == Precision::bf16 && !ctx_.device.is_cuda() && root_)
    std::fprintf(stderr, "kiln: precision bf16 runs as fp32 on the CPU\n");
  check_init_from(cfg);  // a typo stops before any data is built
  // Nothing is written to the run directory until the run really starts
  // (start_reporting): a config, data or checkpoint error found while the
  // run is being set up leaves no directory behind.

  {
    // The task opens its data, then builds the model: build_model checks
    // the run's memory in between (before the model allocates anything).
    const TrainingMemoryCheck memory(ctx_.device, ctx_.plan, ctx_.world, process_info().local_world, root_);
    task_ = topt.make_task ? topt.make_task(cfg, ctx_) : make_task(cfg, ctx_);
  }
  model_ = &task_->model();
  apply_init_from(cfg, *model_);
  if (cfg.lora.enabled) lora_ = setup_lora(cfg, *model_, task_->rng());  // freezes the base, attaches adapters
  model_->to(ctx_.device, DType::f32, ctx_.compute);
  trainable_ = model_->trainable_parameters();
  base_seed_ = task_->rng().seed;
  task_->rng().seed = rank_seed(base_seed_, ctx_.rank);

  // Data parallelism: gradients are views into the reducer's buckets from
  // here on; the optimizer runs over this rank's shard under ZeRO-1.
  if (ctx_.world > 1 || cfg.dist.zero_stage == 1) {
    GradReducerOptions ro;
    ro.bucket_mb = cfg.dist.bucket_mb;
    ro.zero_stage = cfg.dist.zero_stage;
    reducer_ = std::make_unique<GradReducer>(*model_, trainable_, comm_, ro);
  }
  oopt_ = optimizer_options(cfg);
  optimizer_ = std::make_unique<nn::Optimizer>(reducer_ ? reducer_->optimizer_params() : trainable_, oopt_);
  guard_ = std::make_unique<StepGuard>(ctx_.device, cfg.optim.grad_clip,
                                       /*sticky=*/cfg.dist.on_nonfinite == NonfiniteAction::stop);
  // One row per step of a log window (bounded); with an after_step hook
  // every step is read at once.
  const int64_t rows = topt.after_step ? 1 : std::min<int64_t>(cfg.train.log_every, 1024);
  records_ = std::make_unique<StepRecords>(ctx_.device, rows);

  const BatchPlan& plan = ctx_.plan;
  steps_per_epoch_ = task_->train_examples() / plan.global;
  KILN_INPUT_CHECK(steps_per_epoch_ > 0 || cfg.train.max_steps > 0,
                   "the global batch " << plan.global << " (train.batch_size " << plan.micro << " x grad_accum "
                                       << plan.accum << " x " << ctx_.world << " processes) exceeds the "
                                       << task_->train_examples() << " training examples");
  total_steps_ = cfg.train.max_steps;
  if (cfg.train.epochs > 0) {
    const int64_t by_epochs = cfg.train.epochs * steps_per_epoch_;
    total_steps_ = total_steps_ > 0 ? std::min(total_steps_, by_epochs) : by_epochs;
  }
  KILN_INPUT_CHECK(total_steps_ > 0, "the run has no steps: set train.epochs or train.max_steps");
  schedule_ = std::make_unique<nn::LrSchedule>(schedule_config(cfg, total_steps_));
  peak_flops_ = peak_tflops(cfg, ctx_.device) * 1e12;
  result_.run_dir = run_dir_;
  result_.has_accuracy = task_->has_accuracy();
}

void Run::announce() const {
  if (!root_) return;
  const int world = ctx_.world;
  std::fprintf(stderr, "kiln: %s on %s (%s): %s, parameters: %lld trainable / %lld total\n", cfg_.name.c_str(),
               ctx_.device.str().c_str(), ctx_.compute == DType::bf16 ? "bf16" : "fp32",
               model_->describe().c_str(), static_cast<long long>(model_->num_trainable_parameters()),
               static_cast<long long>(model_->num_parameters()));
  if (lora_) {
    int64_t state_bytes = 0;
    for (const auto& st : optimizer_->state()) state_bytes += static_cast<int64_t>(st.second.nbytes());
    std::fprintf(stderr, "kiln: %s\n", describe_lora(*lora_, *model_, state_bytes).c_str());
  }
  std::fprintf(stderr, "kiln: data: %s\n", task_->describe_data().c_str());
  if (reducer_)
    std::fprintf(stderr, "kiln: data parallel: %d process%s (%s), %s\n", world, world == 1 ? "" : "es",
                 comm_.backend(), reducer_->describe().c_str());
  std::fprintf(stderr,
               "kiln: global batch %lld (micro-batch %lld x grad_accum %lld x %d process%s), %lld steps per "
               "epoch, %lld steps, run dir %s\n",
               static_cast<long long>(ctx_.plan.global), static_cast<long long>(ctx_.plan.micro),
               static_cast<long long>(ctx_.plan.accum), world, world == 1 ? "" : "es",
               static_cast<long long>(steps_per_epoch_), static_cast<long long>(total_steps_), run_dir_.c_str());
}

Resumed Run::read_resumed(const std::string& dir) {
  Resumed r;
  r.dir = dir;
  Checkpoint ck = load_checkpoint(dir);  // sizes, CRC-32s, headers
  load_model_state(ck, *model_);         // every tensor by name, shapes checked
  std::vector<std::pair<std::string, Shape>> layout;
  if (reducer_) layout = reducer_->state_layout(oopt_);
  else
    for (auto& [name, t] : optimizer_->state()) layout.emplace_back(name, t.shape());
  for (auto& [name, shape] : layout) {
    Tensor host = Tensor::empty(shape, DType::f32, Device::cpu(), name);
    load_into(ck.optimizer, name, host);  // shape and dtype checked, named in errors
    r.opt_state[name] = host;
  }
  const nlohmann::json& s = ck.state;
  const std::string where = dir + "/" + kCheckpointState;
  auto field = [&](const char* key) -> const nlohmann::json& {
    KILN_INPUT_CHECK(s.contains(key), where << ": \"" << key << "\" is missing");
    return s[key];
  };
  auto integer = [&](const char* key) {
    const nlohmann::json& v = field(key);
    KILN_INPUT_CHECK(v.is_number_integer(), where << ": \"" << key << "\" is not an integer: " << v.dump());
    return v;
  };
  r.step = integer("step").get<int64_t>();
  r.optimizer_steps = integer("optimizer_steps").get<int64_t>();
  KILN_INPUT_CHECK(r.optimizer_steps >= 0 && r.optimizer_steps <= r.step,
                   where << ": \"optimizer_steps\" " << r.optimizer_steps << " is not in [0, step " << r.step << "]");
  r.rng_seed = integer("rng_seed").get<uint64_t>();
  r.rng_offset = integer("rng_offset").get<uint64_t>();
  r.data = field("data");
  r.state = s;
  return r;
}

void Run::apply_resumed(const Resumed& r) {
  start_step_ = r.step;
  optimizer_steps_ = r.optimizer_steps;
  if (reducer_) reducer_->load_state(*optimizer_, r.opt_state, optimizer_steps_);
  else optimizer_->load_state(r.opt_state, optimizer_steps_);
  base_seed_ = r.rng_seed;
  task_->rng().seed = rank_seed(base_seed_, ctx_.rank);
  task_->rng().offset = r.rng_offset;
  task_->restore_data_state(r.data);
  resumed_state_ = r.state;
}

// Rank 0 picks the checkpoint; every rank reads it (full weights, buffers
// and optimizer state, whatever process count wrote it). With resume=auto,
// rank 0 tries the checkpoints newest first and takes the first that loads
// whole: a CRC mismatch and content that does not parse or fit the model
// (an overflowing shape, a missing tensor or state field) are the same
// failure and fall back to the previous checkpoint. When checkpoints exist
// and none loads, the run stops (exit 2) naming each: starting over is
// train.resume=none, never a silent step 0 that then overwrites the run.
void Run::resume() {
  if (cfg_.train.resume == "none") return;
  const bool automatic = cfg_.train.resume == "auto";
  std::string dir;
  if (root_) {
    if (!automatic) {
      apply_resumed(read_resumed(cfg_.train.resume));  // the one asked for: its errors are the answer
      dir = cfg_.train.resume;
    } else {
      const auto candidates = list_checkpoints(run_dir_);
      std::vector<std::string> failures;
      for (const auto& [step, candidate] : candidates) {
        try {
          apply_resumed(read_resumed(candidate));
          dir = candidate;
          break;
        } catch (const OutOfMemory&) {
          throw;  // says nothing about the checkpoint
        } catch (const std::exception& e) {
          std::fprintf(stderr, "kiln: warning: skipping checkpoint %s: %s\n", candidate.c_str(), e.what());
          failures.push_back(std::filesystem::path(candidate).filename().string() + " (" + e.what() + ")");
        }
      }
      if (dir.empty() && !candidates.empty()) {
        std::ostringstream os;
        os << "train.resume=auto: none of the " << candidates.size() << " checkpoint"
           << (candidates.size() == 1 ? "" : "s") << " in " << checkpoints_root(run_dir_) << " loads: ";
        for (size_t i = 0; i < failures.size(); ++i) os << (i ? "; " : "") << failures[i];
        os << ". Nothing was changed; to start this run over from step 0 (replacing its metrics.jsonl and, as it "
              "saves, these checkpoints) set train.resume=none, or give another output_dir";
        throw InputError(os.str());
      }
    }
  }
  comm_.broadcast_string(dir, 0, "resume checkpoint path");
  if (dir.empty()) return;  // resume=auto in a run directory without checkpoints: step 0
  if (!root_) {
    apply_resumed(read_resumed(dir));
    return;
  }
  std::fprintf(stderr, "kiln: resumed from %s at step %lld\n", dir.c_str(), static_cast<long long>(start_step_));
  const nlohmann::json& s = resumed_state_;
  const int64_t ck_world = s.value("world", int64_t{1});
  const int64_t ck_global = s.value("global_batch", ctx_.plan.global);
  if (ck_world != ctx_.world || ck_global != ctx_.plan.global)
    std::fprintf(stderr,
                 "kiln: the checkpoint was written by %lld process%s at global batch %lld; continuing on %d at "
                 "global batch %lld%s\n",
                 static_cast<long long>(ck_world), ck_world == 1 ? "" : "es", static_cast<long long>(ck_global),
                 ctx_.world, static_cast<long long>(ctx_.plan.global),
                 ck_global == ctx_.plan.global ? "" : " (set train.global_batch to keep it across process counts)");
}

// Every rank starts from rank 0's weights and buffers (initialized or resumed).
void Run::broadcast_initial_state() {
  if (ctx_.world == 1) return;
  for (const NamedTensor& t : model_state(*model_)) comm_.broadcast(t.second, 0, "initial " + t.first);
  model_->refresh_lowp();
}

// Only rank 0 writes and talks. The run starts here: its directory and config.yaml are written, and
// metrics.jsonl is replaced only by an explicit restart (train.resume=none);
// a resumed run (resume=auto finding no checkpoint resumes at step 0) keeps
// the lines up to its step.
void Run::start_reporting() {
  report_.unit = std::string(task_->unit()) + "/s";
  if (!root_) return;
  std::filesystem::create_directories(run_dir_);
  write_file_atomic(run_dir_ + "/config.yaml", to_yaml(cfg_));
  metrics_ = std::make_unique<MetricsWriter>(run_dir_ + "/metrics.jsonl",
                                             cfg_.train.resume == "none" ? -1 : start_step_);
  ConsoleReporter::Options ro;
  ro.total_steps = total_steps_;
  ro.log_every = cfg_.train.log_every;
  ro.out = stderr;
  progress_ = std::make_unique<ConsoleReporter>(ro);
  progress_->start(start_step_);
}

// One optimizer step. Nothing here waits on the device: losses and counts
// go to the step's record row, the norm and the skip decision stay on the
// device, and the only host collective is the three batch counts.
void Run::train_step(int64_t step) {
  if (topt_.before_step) topt_.before_step(step, *model_);
  model_->zero_grad();
  StepBatch global = task_->begin_step();
  if (ctx_.world > 1) {
    std::vector<double> v = {static_cast<double>(global.examples), static_cast<double>(global.units),
                             static_cast<double>(global.loss_tokens)};
    comm_.all_reduce_values(v, ReduceOp::sum, "step token counts");
    global.examples = static_cast<int64_t>(v[0]);
    global.units = static_cast<int64_t>(v[1]);
    global.loss_tokens = static_cast<int64_t>(v[2]);
  }
  // The step's gradient is the mean over every loss token of the global
  // batch: each token's loss gradient is scaled by 1 / tokens here, times
  // world for the reducer's mean over ranks.
  const float loss_scale =
      global.loss_tokens > 0 ? static_cast<float>(ctx_.world) / static_cast<float>(global.loss_tokens) : 0.0f;
  LossStats& stats = records_->open(step);
  const int64_t accum = ctx_.plan.accum;
  for (int64_t micro = 0; micro < accum; ++micro) {
    if (reducer_ && micro == accum - 1) reducer_->arm();  // buckets reduce during the last backward
    task_->train_micro_batch(micro, loss_scale, stats);
  }
  if (reducer_) reducer_->finish();
  guard_->begin_step();
  guard_->compute(reducer_ ? reducer_->optimizer_params() : trainable_, reducer_ ? reducer_->norm_comm() : nullptr);
  if (reducer_) reducer_->before_step();
  optimizer_->step(schedule_->lr(step), guard_->inputs());
  if (reducer_) reducer_->after_step();
  records_->close(global, *guard_);
}

// Reads the pending steps back (the one device wait of a window): reports
// skipped steps or stops, feeds the hooks and the window's sums.
void Run::read_window() {
  if (records_->empty()) return;
  const int64_t first = records_->first_step();
  const std::vector<StepRecords::Step> steps = records_->read(comm_);
  for (size_t i = 0; i < steps.size(); ++i) {
    const StepRecords::Step& s = steps[i];
    const int64_t n = first + static_cast<int64_t>(i) + 1;  // 1-based step
    if (s.skipped) {
      // The flag comes from the global norm, so every rank decides alike.
      if (cfg_.dist.on_nonfinite == NonfiniteAction::stop)
        throw NonFiniteError("step " + std::to_string(n) +
                             ": non-finite loss or gradient norm (dist.on_nonfinite: stop)");
      if (root_)
        std::fprintf(stderr, "kiln: step %lld: non-finite loss or gradient norm, step skipped\n",
                     static_cast<long long>(n));
    } else {
      ++optimizer_steps_;
    }
    window_.add(s.stats);
    window_norm_ = s.grad_norm;
    report_.loss = s.stats.mean_loss();
    if (topt_.after_step) {
      StepEvent ev;
      ev.step = n;
      ev.loss = s.stats.mean_loss();
      ev.grad_norm = s.grad_norm;
      ev.skipped = s.skipped;
      ev.model = model_;
      topt_.after_step(ev);
    }
  }
}

// A train line over the log window (its steps have been read, so the
// device is idle: the wall time is the window's).
void Run::log_window(int64_t done) {
  const double dt = seconds_since(t_window_);
  const double per_s = static_cast<double>(window_.units) / dt;
  nlohmann::json line;
  line["step"] = done;
  line["split"] = "train";
  line["loss"] = window_.mean_loss();
  line["lr"] = window_lr_;
  line["grad_norm"] = window_norm_;
  if (task_->has_accuracy()) line["accuracy"] = window_.accuracy();
  line[std::string(task_->unit()) + "_per_s"] = per_s;
  if (peak_flops_ > 0 && task_->train_flops_per_example() > 0) {
    // MFU per GPU: every rank's examples against every GPU's peak.
    const double examples_per_s = static_cast<double>(window_.samples) / dt;
    line["mfu"] = task_->train_flops_per_example() * examples_per_s / (peak_flops_ * ctx_.world);
  }
  write_metrics(line);
  report_.throughput = per_s;
  result_.final_train_loss = window_.mean_loss();
  window_ = TaskStats();
  t_window_ = Clock::now();
}

// Every rank evaluates (a task may shard the split by rank); the sums are
// combined, so means and accuracy are over everything evaluated.
TaskStats Run::evaluate(Split split, int64_t step) {
  model_->eval();
  TaskStats st = task_->evaluate(split, split == Split::test ? 0 : cfg_.train.eval_batches);
  model_->train();
  all_reduce_stats(comm_, st, "eval stats");
  nlohmann::json line;
  line["step"] = step;
  line["split"] = split_name(split);
  line["loss"] = st.mean_loss();
  if (task_->has_accuracy()) line["accuracy"] = st.accuracy();
  if (st.exact_match_total > 0) line["exact_match"] = st.exact_match();
  write_metrics(line);
  std::ostringstream os;
  os << split_name(split) << " @ step " << step << ": loss " << st.mean_loss();
  if (task_->has_accuracy()) os << ", accuracy " << st.accuracy();
  if (st.exact_match_total > 0)
    os << ", exact match " << st.exact_match() << " (" << st.exact_match_correct << "/" << st.exact_match_total << ")";
  message(os.str());
  return st;
}

// Every rank samples (the task's random stream stays in step on all).
void Run::sample(int64_t step) {
  model_->eval();
  const std::string text = task_->sample_text();
  model_->train();
  if (text.empty()) return;
  nlohmann::json line;
  line["step"] = step;
  line["split"] = "sample";
  line["text"] = text;
  write_metrics(line);
  message("sample @ step " + std::to_string(step) + ":\n" + text);
}

// Collective under ZeRO-1 (the state is gathered); rank 0 writes. The steps
// before it have been read, so optimizer_steps_ is exact.
void Run::save(int64_t step) {
  std::vector<std::pair<std::string, Tensor>> state =
      reducer_ ? reducer_->gather_state(*optimizer_, oopt_) : optimizer_->state();
  if (!root_) return;
  nlohmann::json s;
  s["optimizer_steps"] = optimizer_steps_;
  s["rng_seed"] = base_seed_;
  s["rng_offset"] = task_->rng().offset;
  s["data"] = task_->data_state();
  s["config"] = cfg_.name;
  s["world"] = ctx_.world;
  s["global_batch"] = ctx_.plan.global;
  // A LoRA run saves its adapters, their optimizer state and the base's identity only.
  const std::string dir = lora_ ? save_adapter_checkpoint(run_dir_, step, *model_, *lora_, state, s)
                                : save_checkpoint(run_dir_, step, model_state(*model_), state, s);
  prune_checkpoints(run_dir_, static_cast<int>(cfg_.train.keep_last), step);
  message("saved checkpoint " + dir);
}

TrainResult Run::execute() {
  announce();
  resume();
  broadcast_initial_state();
  start_reporting();
  model_->train();
  t_window_ = Clock::now();
  const TrainSection& t = cfg_.train;
  auto every = [](int64_t n, int64_t done) { return n > 0 && done % n == 0; };
  for (int64_t step = start_step_; step < total_steps_; ++step) {
    const auto t_step = Clock::now();
    train_step(step);
    const int64_t done = step + 1;
    window_lr_ = schedule_->lr(step);
    const bool last = done == total_steps_;
    const bool log = every(t.log_every, done) || last;
    const bool eval = task_->has_split(Split::val) && every(t.eval_every, done) && !last;
    const bool samp = every(t.sample_every, done);
    const bool ckpt = every(t.checkpoint_every, done) && !last;
    // The console prints the run's first step: read it, so the line shows
    // its real loss (one device wait per run).
    const bool first = done == start_step_ + 1;
    // Read points: whatever reports, evaluates or saves first sees every
    // step so far (and stops at a non-finite one with on_nonfinite: stop).
    if (first || log || eval || samp || ckpt || records_->full() || topt_.after_step) read_window();
    if (log) log_window(done);
    report_.step = done;
    report_.lr = window_lr_;
    if (progress_) progress_->step(report_);
    examples_total_ += static_cast<double>(ctx_.plan.global);
    time_total_ += seconds_since(t_step);
    if (eval) evaluate(Split::val, done);
    if (samp) sample(done);
    if (ckpt) save(done);
    result_.steps = done;
  }
  read_window();
  if (progress_) progress_->finish();
  if (result_.steps > start_step_) save(result_.steps);
  if (task_->has_split(Split::val)) {
    TaskStats v = evaluate(Split::val, total_steps_);
    result_.val_loss = v.mean_loss();
    result_.val_accuracy = v.accuracy();
  }
  if (task_->has_split(Split::test)) {
    TaskStats s = evaluate(Split::test, total_steps_);
    result_.test_loss = s.mean_loss();
    result_.test_accuracy = s.accuracy();
  }
  result_.wall_s = seconds_since(t_start_);
  result_.examples_per_s = time_total_ > 0 ? examples_total_ / time_total_ : 0;
  return result_;
}

}  // namespace

DType compute_dtype(const TrainConfig& cfg, Device device) {
  return cfg.precision == Precision::bf16 && device.is_cuda() ? DType::bf16 : DType::f32;
}

BatchPlan plan_batch(const TrainConfig& cfg, int world) {
  KILN_CHECK(world >= 1, "plan_batch: world " << world);
  BatchPlan p;
  p.micro = cfg.train.batch_size;
  if (cfg.train.global_batch == 0) {
    p.accum = cfg.train.grad_accum;
    p.global = p.micro * p.accum * world;
    return p;
  }
  const int64_t per_step = p.micro * world;
  KILN_INPUT_CHECK(cfg.train.global_batch % per_step == 0,
                   "train.global_batch: " << cfg.train.global_batch << " is not a multiple of train.batch_size x "
                                          << "processes = " << p.micro << " x " << world << " = " << per_step
                                          << " (with " << world << " process" << (world == 1 ? "" : "es")
                                          << "; change train.global_batch or train.batch_size)");
  p.accum = cfg.train.global_batch / per_step;
  KILN_INPUT_CHECK(cfg.train.grad_accum == 1 || cfg.train.grad_accum == p.accum,
                   "train.grad_accum: " << cfg.train.grad_accum << " conflicts with train.global_batch "
                                        << cfg.train.global_batch << ", which needs " << p.accum << " with "
                                        << world << " process" << (world == 1 ? "" : "es")
                                        << "; leave grad_accum at 1 to have it derived");
  p.global = cfg.train.global_batch;
  return p;
}

TrainResult train(const TrainConfig& cfg, const TrainOptions& opt) {
  // The launcher's view of this process: its GPU (local rank) and its share
  // of the node's cores. The run's rank and world are the communicator's.
  const ProcessInfo& launched = process_info();
  const int world = opt.comm ? opt.comm->world() : launched.world;
  // Before anything is allocated: a global batch that does not divide.
  const BatchPlan plan = plan_batch(cfg, world);
  const bool root = opt.comm ? opt.comm->is_root() : launched.is_root();
  const Device device = resolve_device(cfg.device, launched.local_rank, /*announce=*/root);
  set_current_device(device);
  // CPU threads are shared by the node's processes (the launcher's count,
  // also when a test runs one-process trainings side by side).
  set_cpu_threads(static_cast<int>(
      std::max<int64_t>(1, resolve_threads(cfg.threads) / (cfg.threads > 0 ? 1 : launched.local_world))));
  std::unique_ptr<Communicator> owned;
  Communicator* comm = opt.comm;
  if (!comm) {
    CommOptions co;
    co.timeout_s = static_cast<double>(cfg.dist.timeout_s);
    owned = make_communicator(device, co);
    comm = owned.get();
  }
  TaskContext ctx;
  ctx.device = device;
  ctx.compute = compute_dtype(cfg, device);
  ctx.plan = plan;
  ctx.rank = comm->rank();
  ctx.world = comm->world();
  ctx.comm = comm;
  if (comm->world() == 1) return Run(cfg, opt, ctx).execute();
  try {
    return Run(cfg, opt, ctx).execute();
  } catch (const NonFiniteError&) {
    throw;  // every rank decided this at the same step
  } catch (const std::exception& e) {
    // One rank failing alone would leave the others waiting in their next
    // collective until the timeout: end the job now (status 2 for bad input,
    // as the CLI uses).
    comm->abort(std::string("error: ") + e.what(), dynamic_cast<const InputError*>(&e) ? 2 : 1);
    throw;  // not reached: abort ends the process
  }
}

CheckpointEval evaluate_checkpoint(const std::string& path, Split split, const std::vector<std::string>& overrides) {
  // A config file: the model it would start training from (model.init_from,
  // or its seeded random init), e.g. a base model before fine-tuning.
  const std::string ext = std::filesystem::path(path).extension().string();
  std::error_code ec;
  const bool from_config = (ext == ".yaml" || ext == ".yml") && std::filesystem::is_regular_file(path, ec);
  CheckpointSource src;
  if (from_config) {
    src.cfg = load_config(path, overrides);
    src.checkpoint = src.cfg.model.init_from.empty() ? "the initial weights of " + path : src.cfg.model.init_from;
  } else {
    src = resolve_checkpoint(path, overrides);
  }
  CheckpointEval out;
  out.cfg = src.cfg;
  out.checkpoint = src.checkpoint;
  const TrainConfig& cfg = out.cfg;
  const Device device = resolve_device(cfg.device);
  set_current_device(device);
  set_cpu_threads(static_cast<int>(resolve_threads(cfg.threads)));
  const TaskContext ctx = single_process_context(device, compute_dtype(cfg, device), plan_batch(cfg, 1));
  std::unique_ptr<Task> task = make_task(cfg, ctx);
  nn::Module& model = task->model();
  if (from_config) apply_init_from(cfg, model);
  model.to(device, DType::f32, ctx.compute);
  if (!from_config) load_model_state(load_checkpoint(src.checkpoint), model);
  KILN_INPUT_CHECK(task->has_split(split), "the data has no " << split_name(split) << " split");
  std::fprintf(stderr, "kiln: evaluating %s on the %s split\n", src.checkpoint.c_str(), split_name(split));
  model.eval();
  out.stats = task->evaluate(split, 0);
  out.has_accuracy = task->has_accuracy();
  return out;
}

}  // namespace kiln
