#include "trainers/trainer.h"

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "data/safetensors.h"
#include "data/safetensors_tensor.h"
#include "nn/optimizer.h"
#include "nn/schedule.h"
#include "runtime/atomic_file.h"
#include "runtime/blas.h"
#include "runtime/communicator.h"
#include "runtime/process_info.h"
#include "runtime/stream.h"
#include "trainers/checkpoint.h"
#include "trainers/grad_reducer.h"
#include "trainers/metrics.h"

namespace kiln {

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::val: return "val";
    case Split::test: return "test";
  }
  return "?";
}

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

void refresh_lowp(nn::Module& m) {
  for (nn::Parameter* p : m.parameters())
    if (p->lowp.defined()) p->lowp.copy_from(p->value.cast(DType::bf16));
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

int64_t resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? hw : 1;
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
void all_reduce_stats(Communicator& comm, TaskStats& st, const char* what, bool* any_nonfinite = nullptr) {
  const bool bad = !std::isfinite(st.loss_sum);
  if (comm.world() == 1) {
    if (any_nonfinite) *any_nonfinite = bad;
    return;
  }
  std::vector<double> v = {st.loss_sum,
                           static_cast<double>(st.loss_count),
                           static_cast<double>(st.correct),
                           static_cast<double>(st.samples),
                           static_cast<double>(st.tokens),
                           bad ? 1.0 : 0.0};
  comm.all_reduce_values(v, ReduceOp::sum, what);
  st.loss_sum = v[0];
  st.loss_count = static_cast<int64_t>(v[1]);
  st.correct = static_cast<int64_t>(v[2]);
  st.samples = static_cast<int64_t>(v[3]);
  st.tokens = static_cast<int64_t>(v[4]);
  if (any_nonfinite) *any_nonfinite = v[5] > 0.0;
}

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& topt, const BatchPlan& plan, Device device,
                         Communicator& comm) {
  const auto t_start = Clock::now();
  const int rank = comm.rank(), world = comm.world();
  const bool root = comm.is_root();
  DType compute = DType::f32;
  if (cfg.precision == Precision::bf16) {
    if (device.is_cuda()) compute = DType::bf16;
    else if (root) std::fprintf(stderr, "kiln: precision bf16 runs as fp32 on the CPU\n");
  }

  const std::string run_dir = cfg.output_dir;
  if (root) {
    std::filesystem::create_directories(run_dir);
    write_file_atomic(run_dir + "/config.yaml", to_yaml(cfg));
  }

  std::unique_ptr<Task> task = make_task(cfg, device);
  nn::Module& model = task->model();
  model.to(device, DType::f32, compute);
  std::vector<nn::Parameter*> params = model.parameters();
  uint64_t base_seed = task->rng().seed;
  task->rng().seed = rank_seed(base_seed, rank);

  // Data parallelism: gradients are views into the reducer's buckets from
  // here on; the optimizer runs over this rank's shard under ZeRO-1.
  std::unique_ptr<GradReducer> reducer;
  if (world > 1 || cfg.dist.zero_stage == 1) {
    GradReducerOptions ro;
    ro.bucket_mb = cfg.dist.bucket_mb;
    ro.zero_stage = cfg.dist.zero_stage;
    reducer = std::make_unique<GradReducer>(model, params, comm, ro);
  }
  const nn::OptimizerOptions oopt = optimizer_options(cfg);
  nn::Optimizer optimizer(reducer ? reducer->optimizer_params() : params, oopt);

  const int64_t global_batch = plan.global;
  const int64_t steps_per_epoch = task->train_examples() / global_batch;
  KILN_INPUT_CHECK(steps_per_epoch > 0 || cfg.train.max_steps > 0,
                   "the global batch " << global_batch << " (train.batch_size " << plan.micro << " x grad_accum "
                                       << plan.accum << " x " << world << " processes) exceeds the "
                                       << task->train_examples() << " training examples");
  int64_t total_steps = cfg.train.max_steps;
  if (cfg.train.epochs > 0) {
    const int64_t by_epochs = cfg.train.epochs * steps_per_epoch;
    total_steps = total_steps > 0 ? std::min(total_steps, by_epochs) : by_epochs;
  }
  KILN_INPUT_CHECK(total_steps > 0, "the run has no steps: set train.epochs or train.max_steps");
  const nn::LrSchedule schedule(schedule_config(cfg, total_steps));

  if (root) {
    std::fprintf(stderr, "kiln: %s on %s (%s), %lld parameters\n", cfg.name.c_str(), device.str().c_str(),
                 compute == DType::bf16 ? "bf16" : "fp32", static_cast<long long>(model.num_parameters()));
    std::fprintf(stderr, "kiln: data: %s\n", task->describe_data().c_str());
    if (world > 1 || reducer)
      std::fprintf(stderr, "kiln: data parallel: %d process%s (%s), %s\n", world, world == 1 ? "" : "es",
                   comm.backend(), reducer->describe().c_str());
    std::fprintf(stderr,
                 "kiln: global batch %lld (micro-batch %lld x grad_accum %lld x %d process%s), %lld steps per "
                 "epoch, %lld steps, run dir %s\n",
                 static_cast<long long>(global_batch), static_cast<long long>(plan.micro),
                 static_cast<long long>(plan.accum), world, world == 1 ? "" : "es",
                 static_cast<long long>(steps_per_epoch), static_cast<long long>(total_steps), run_dir.c_str());
  }

  // --- resume ---------------------------------------------------------------
  // Rank 0 picks the checkpoint; every rank reads it (full weights and full
  // optimizer state, whatever process count wrote it).
  int64_t start_step = 0;
  if (cfg.train.resume != "none") {
    std::string dir;
    if (root) {
      if (cfg.train.resume == "auto") dir = find_latest_valid_checkpoint(run_dir).value_or("");
      else dir = cfg.train.resume;
    }
    comm.broadcast_string(dir, 0, "resume checkpoint path");
    if (!dir.empty()) {
      Checkpoint ck = load_checkpoint(dir);
      for (nn::Parameter* p : params) load_into(ck.weights, p->name, p->value);
      refresh_lowp(model);
      std::vector<std::pair<std::string, Shape>> layout;
      if (reducer) layout = reducer->state_layout(oopt);
      else
        for (auto& [name, t] : optimizer.state()) layout.emplace_back(name, t.shape());
      std::map<std::string, Tensor> opt_state;
      for (auto& [name, shape] : layout) {
        Tensor host = Tensor::empty(shape, DType::f32, Device::cpu(), name);
        load_into(ck.optimizer, name, host);  // shape and dtype checked, named in errors
        opt_state[name] = host;
      }
      const nlohmann::json& s = ck.state;
      start_step = s.at("step").get<int64_t>();
      const int64_t opt_steps = s.at("optimizer_steps").get<int64_t>();
      if (reducer) reducer->load_state(optimizer, opt_state, opt_steps);
      else optimizer.load_state(opt_state, opt_steps);
      base_seed = s.at("rng_seed").get<uint64_t>();
      task->rng().seed = rank_seed(base_seed, rank);
      task->rng().offset = s.at("rng_offset").get<uint64_t>();
      task->restore_data_state(s.at("data"));
      if (root) {
        std::fprintf(stderr, "kiln: resumed from %s at step %lld\n", dir.c_str(), static_cast<long long>(start_step));
        const int64_t ck_world = s.value("world", int64_t{1});
        const int64_t ck_global = s.value("global_batch", global_batch);
        if (ck_world != world || ck_global != global_batch)
          std::fprintf(stderr,
                       "kiln: the checkpoint was written by %lld process%s at global batch %lld; continuing on %d "
                       "at global batch %lld%s\n",
                       static_cast<long long>(ck_world), ck_world == 1 ? "" : "es",
                       static_cast<long long>(ck_global), world, static_cast<long long>(global_batch),
                       ck_global == global_batch ? "" : " (set train.global_batch to keep it across process counts)");
      }
    } else if (cfg.train.resume != "auto") {
      throw InputError("train.resume: no checkpoint at '" + cfg.train.resume + "'");
    }
  }

  // Every rank starts from rank 0's weights (initialized or resumed).
  if (world > 1) {
    for (nn::Parameter* p : params) comm.broadcast(p->value, 0, "initial weights");
    refresh_lowp(model);
  }

  // Only rank 0 writes metrics and talks.
  std::unique_ptr<MetricsWriter> metrics;
  std::unique_ptr<ConsoleReporter> progress;
  if (root) {
    metrics = std::make_unique<MetricsWriter>(run_dir + "/metrics.jsonl", start_step > 0 ? start_step : -1);
    ConsoleReporter::Options ro;
    ro.total_steps = total_steps;
    ro.log_every = cfg.train.log_every;
    ro.out = stderr;
    progress = std::make_unique<ConsoleReporter>(ro);
    progress->start(start_step);
  }
  auto message = [&](const std::string& line) {
    if (progress) progress->message(line);
  };
  auto write_metrics = [&](const nlohmann::json& line) {
    if (metrics) metrics->write(line);
  };
  StepReport report;
  report.unit = std::string(task->unit()) + "/s";

  // Collective under ZeRO-1 (the state is gathered); rank 0 writes.
  auto save = [&](int64_t step) {
    std::vector<std::pair<std::string, Tensor>> state =
        reducer ? reducer->gather_state(optimizer, oopt) : optimizer.state();
    if (!root) return;
    std::vector<NamedTensor> w;
    for (nn::Parameter* p : params) w.emplace_back(p->name, p->value);
    nlohmann::json s;
    s["optimizer_steps"] = optimizer.steps();
    s["rng_seed"] = base_seed;
    s["rng_offset"] = task->rng().offset;
    s["data"] = task->data_state();
    s["config"] = cfg.name;
    s["world"] = world;
    s["global_batch"] = global_batch;
    const std::string dir = save_checkpoint(run_dir, step, w, state, s);
    prune_checkpoints(run_dir, static_cast<int>(cfg.train.keep_last));
    message("saved checkpoint " + dir);
  };

  // Every rank evaluates (a task may shard the split by rank); the sums are
  // combined, so means and accuracy are over everything evaluated.
  auto run_eval = [&](Split split, int64_t step) {
    model.eval();
    TaskStats st = task->evaluate(split, split == Split::test ? 0 : cfg.train.eval_batches);
    model.train();
    all_reduce_stats(comm, st, "eval stats");
    nlohmann::json line;
    line["step"] = step;
    line["split"] = split_name(split);
    line["loss"] = st.mean_loss();
    if (task->is_classifier()) line["accuracy"] = st.accuracy();
    write_metrics(line);
    std::ostringstream os;
    os << split_name(split) << " @ step " << step << ": loss " << st.mean_loss();
    if (task->is_classifier()) os << ", accuracy " << st.accuracy();
    message(os.str());
    return st;
  };

  const double peak_flops = peak_tflops(cfg, device) * 1e12;
  TrainResult result;
  result.run_dir = run_dir;
  model.train();
  const int64_t accum = plan.accum;
  TaskStats window;
  auto t_window = Clock::now();
  double examples_total = 0, time_total = 0;
  for (int64_t step = start_step; step < total_steps; ++step) {
    const auto t_step = Clock::now();
    if (topt.before_step) topt.before_step(step, model);
    model.zero_grad();
    TaskStats st;
    for (int64_t micro = 0; micro < accum; ++micro) {
      if (reducer && micro == accum - 1) reducer->arm();  // buckets reduce during the last backward
      st.add(task->train_micro_batch(1.0f / static_cast<float>(accum)));
    }
    if (reducer) reducer->finish();
    // Losses and counts over all ranks; a non-finite loss anywhere is seen
    // everywhere (and a non-finite gradient anywhere makes the mean, hence
    // the norm, non-finite on every rank).
    bool nonfinite = false;
    all_reduce_stats(comm, st, "step stats", &nonfinite);
    const double norm = reducer ? reducer->grad_norm() : nn::grad_norm(params);
    const double lr = schedule.lr(step);
    const bool skipped = nonfinite || !std::isfinite(norm) || !std::isfinite(st.loss_sum);
    if (skipped) {
      if (cfg.dist.on_nonfinite == NonfiniteAction::stop)
        throw NonFiniteError("step " + std::to_string(step + 1) +
                             ": non-finite loss or gradient norm (dist.on_nonfinite: stop)");
      if (root)
        std::fprintf(stderr, "kiln: step %lld: non-finite loss or gradient norm, step skipped\n",
                     static_cast<long long>(step + 1));
    } else {
      if (reducer) reducer->before_step();
      optimizer.step(lr, nn::clip_scale(norm, cfg.optim.grad_clip));
      if (reducer) reducer->after_step();
    }
    if (topt.after_step) {
      StepEvent ev;
      ev.step = step + 1;
      ev.loss = st.mean_loss();
      ev.grad_norm = norm;
      ev.skipped = skipped;
      ev.model = &model;
      topt.after_step(ev);
    }
    window.add(st);
    const int64_t done = step + 1;
    if (done % cfg.train.log_every == 0 || done == total_steps) {
      // Throughput over the logging window (synchronizes the device once),
      // counting every rank's examples.
      if (device.is_cuda()) Stream().synchronize();
      const double dt = seconds_since(t_window);
      const double per_s = static_cast<double>(task->unit()[0] == 't' ? window.tokens : window.samples) / dt;
      nlohmann::json line;
      line["step"] = done;
      line["split"] = "train";
      line["loss"] = window.mean_loss();
      line["lr"] = lr;
      line["grad_norm"] = norm;
      if (task->is_classifier()) line["accuracy"] = window.accuracy();
      line[std::string(task->unit()) + "_per_s"] = per_s;
      if (peak_flops > 0 && task->train_flops_per_example() > 0) {
        // MFU per GPU: every rank's examples against every GPU's peak.
        const double examples_per_s = static_cast<double>(window.samples) / dt;
        line["mfu"] = task->train_flops_per_example() * examples_per_s / (peak_flops * world);
      }
      write_metrics(line);
      report.throughput = per_s;
      result.final_train_loss = window.mean_loss();
      window = TaskStats();
      t_window = Clock::now();
    }
    report.step = done;
    report.loss = st.mean_loss();
    report.lr = lr;
    if (progress) progress->step(report);
    examples_total += static_cast<double>(st.samples);
    time_total += seconds_since(t_step);
    if (task->has_split(Split::val) && cfg.train.eval_every > 0 && done % cfg.train.eval_every == 0 &&
        done != total_steps)
      run_eval(Split::val, done);
    if (cfg.train.sample_every > 0 && done % cfg.train.sample_every == 0) {
      // Every rank samples (the task's random stream stays in step on all).
      model.eval();
      const std::string text = task->sample_text();
      model.train();
      if (!text.empty()) {
        nlohmann::json line;
        line["step"] = done;
        line["split"] = "sample";
        line["text"] = text;
        write_metrics(line);
        message("sample @ step " + std::to_string(done) + ":\n" + text);
      }
    }
    if (cfg.train.checkpoint_every > 0 && done % cfg.train.checkpoint_every == 0 && done != total_steps) save(done);
    result.steps = done;
  }
  if (progress) progress->finish();
  if (result.steps > start_step) save(result.steps);
  if (task->has_split(Split::val)) {
    TaskStats v = run_eval(Split::val, total_steps);
    result.val_loss = v.mean_loss();
    result.val_accuracy = v.accuracy();
  }
  if (task->has_split(Split::test)) {
    TaskStats t = run_eval(Split::test, total_steps);
    result.test_loss = t.mean_loss();
    result.test_accuracy = t.accuracy();
  }
  result.wall_s = seconds_since(t_start);
  result.examples_per_s = time_total > 0 ? examples_total / time_total : 0;
  return result;
}

}  // namespace

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
  const ProcessInfo launched = process_info();
  const int world = opt.comm ? opt.comm->world() : launched.world;
  // Before anything is allocated: a global batch that does not divide.
  const BatchPlan plan = plan_batch(cfg, world);
  // Tasks shard their data by process_info(); keep it equal to the
  // communicator's view when the caller brings one.
  std::optional<ProcessInfoOverride> pinned;
  if (opt.comm) {
    ProcessInfo p = launched;
    p.rank = opt.comm->rank();
    p.world = world;
    pinned.emplace(p);
  }
  const ProcessInfo& pi = process_info();
  const Device device = resolve_device(cfg.device, pi.local_rank, /*announce=*/pi.is_root());
  set_current_device(device);
  // CPU threads are shared by the node's ranks.
  set_cpu_threads(static_cast<int>(std::max<int64_t>(1, resolve_threads(cfg.threads) /
                                                           (cfg.threads > 0 ? 1 : pi.local_world))));
  std::unique_ptr<Communicator> owned;
  Communicator* comm = opt.comm;
  if (!comm) {
    CommOptions co;
    co.timeout_s = static_cast<double>(cfg.dist.timeout_s);
    owned = make_communicator(device, co);
    comm = owned.get();
  }
  if (comm->world() == 1) return run_training(cfg, opt, plan, device, *comm);
  try {
    return run_training(cfg, opt, plan, device, *comm);
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

}  // namespace kiln

namespace kiln {

TaskStats evaluate_checkpoint(const std::string& path, Split split, const std::vector<std::string>& overrides,
                              TrainConfig* cfg_out) {
  namespace fs = std::filesystem;
  KILN_INPUT_CHECK(fs::is_directory(path), "'" << path << "' is not a run or checkpoint directory");
  std::string ckpt = path;
  std::string run_dir;
  if (fs::exists(fs::path(path) / kCheckpointManifest)) {
    run_dir = fs::path(path).parent_path().parent_path().string();  // RUN/checkpoints/step_N
  } else {
    run_dir = path;
    std::optional<std::string> latest = find_latest_valid_checkpoint(path);
    KILN_INPUT_CHECK(latest.has_value(), "'" << path << "' holds no valid checkpoint (looked in "
                                              << checkpoints_root(path) << ")");
    ckpt = *latest;
  }
  const std::string cfg_path = (fs::path(run_dir) / "config.yaml").string();
  KILN_INPUT_CHECK(fs::exists(cfg_path), "'" << cfg_path << "' is missing: kiln eval needs the run's config.yaml");
  TrainConfig cfg = load_config(cfg_path, overrides);
  if (cfg_out) *cfg_out = cfg;
  const Device device = resolve_device(cfg.device);
  set_current_device(device);
  set_cpu_threads(static_cast<int>(resolve_threads(cfg.threads)));
  const DType compute = cfg.precision == Precision::bf16 && device.is_cuda() ? DType::bf16 : DType::f32;
  std::unique_ptr<Task> task = make_task(cfg, device);
  nn::Module& model = task->model();
  model.to(device, DType::f32, compute);
  Checkpoint ck = load_checkpoint(ckpt);
  for (nn::Parameter* p : model.parameters()) load_into(ck.weights, p->name, p->value);
  refresh_lowp(model);
  KILN_INPUT_CHECK(task->has_split(split), "the data has no " << split_name(split) << " split");
  std::fprintf(stderr, "kiln: evaluating %s on the %s split\n", ckpt.c_str(), split_name(split));
  model.eval();
  return task->evaluate(split, 0);
}

}  // namespace kiln
