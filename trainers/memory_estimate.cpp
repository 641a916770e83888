#include "trainers/memory_estimate.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace kiln {

namespace {

thread_local const TrainingMemoryCheck* t_active = nullptr;

// MemAvailable of /proc/meminfo in bytes; 0 when it cannot be read.
double host_mem_available() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0;
}

}  // namespace

std::string format_memory(double b) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024.0 && u < 6) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

MemoryEstimate estimate_training_memory(const TrainConfig& cfg, const ModelSize& size, Device device,
                                        const BatchPlan& plan, int world) {
  MemoryEstimate e;
  e.parameters = size.parameters;
  e.batch = plan.micro;
  e.keys = size.keys;
  // Doubles throughout: the point is to report sizes that overflow int64.
  const double P = static_cast<double>(size.parameters);
  const bool bf16 = cfg.precision == Precision::bf16 && device.is_cuda();
  e.weights = 4.0 * P + (bf16 ? 2.0 * P : 0.0) + 4.0 * static_cast<double>(size.buffers);
  e.gradients = 4.0 * P;  // a fresh model trains every parameter
  double moments = 0;
  if (cfg.optim.type == OptimizerType::adamw) moments = 2;
  else if (cfg.optim.momentum != 0) moments = 1;
  e.optimizer = moments * 4.0 * P / (cfg.dist.zero_stage == 1 ? std::max(world, 1) : 1);
  e.activations_known = size.activations_known;
  e.activations = size.activations_per_example * static_cast<double>(plan.micro) * (bf16 ? 2.0 : 4.0);
  return e;
}

MemoryAvailable memory_available(Device device, int processes) {
  MemoryAvailable a;
  if (device.is_cuda()) {
    a.bytes = static_cast<double>(allocator_for(device).backing().free_bytes());
    a.where = device.str() + " (free device memory)";
    return a;
  }
  const double avail = host_mem_available();
  const int n = std::max(processes, 1);
  a.bytes = avail / n;
  std::ostringstream os;
  os << "the host (MemAvailable in /proc/meminfo";
  if (n > 1) os << ": " << format_memory(avail) << ", shared by this node's " << n << " processes";
  os << ")";
  a.where = os.str();
  return a;
}

std::string describe_memory(const MemoryEstimate& e) {
  std::ostringstream os;
  os << "memory estimate " << format_memory(e.total()) << " per process: weights " << format_memory(e.weights)
     << ", gradients " << format_memory(e.gradients) << ", optimizer state " << format_memory(e.optimizer)
     << ", activations ";
  if (e.activations_known) os << format_memory(e.activations) << " (train.batch_size " << e.batch << ")";
  else os << "unknown (the model type registers no size hook)";
  return os.str();
}

void check_memory_fits(const MemoryEstimate& e, const MemoryAvailable& avail) {
  if (avail.bytes <= 0 || e.total() <= avail.bytes) return;
  std::ostringstream os;
  os << "the model does not fit: " << e.parameters << " parameters; " << describe_memory(e) << "; that exceeds the "
     << format_memory(avail.bytes) << " available on " << avail.where << ". The size comes from " << e.keys
     << ": make them smaller";
  throw InputError(os.str());
}

TrainingMemoryCheck::TrainingMemoryCheck(Device device, const BatchPlan& plan, int world, int processes_on_host,
                                         bool announce)
    : device_(device), plan_(plan), world_(world), processes_(processes_on_host), announce_(announce),
      outer_(t_active) {
  t_active = this;
}

TrainingMemoryCheck::~TrainingMemoryCheck() { t_active = outer_; }

const TrainingMemoryCheck* TrainingMemoryCheck::active() { return t_active; }

MemoryEstimate TrainingMemoryCheck::check(const TrainConfig& cfg, const ModelSize& size) const {
  const MemoryEstimate e = estimate_training_memory(cfg, size, device_, plan_, world_);
  const MemoryAvailable a = memory_available(device_, processes_);
  if (announce_)
    std::fprintf(stderr, "kiln: model: %lld parameters, %s; %s available on %s\n",
                 static_cast<long long>(e.parameters), describe_memory(e).c_str(), format_memory(a.bytes).c_str(),
                 a.where.c_str());
  check_memory_fits(e, a);
  return e;
}

}  // namespace kiln
