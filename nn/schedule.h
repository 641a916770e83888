// Learning-rate schedules: lr(step) for step = 0, 1, ... total_steps - 1.
// Linear warm-up from lr/warmup to lr over `warmup_steps`, then one of:
//   constant  lr
//   cosine    min_lr + (lr - min_lr) · ½(1 + cos(π · progress))
//   linear    lr → min_lr linearly
//   step      lr · gamma^floor((step - warmup) / step_size)
// with progress = (step - warmup) / (total - warmup) and min_lr = lr · min_lr_ratio.
#pragma once

#include <cstdint>
#include <string>

namespace kiln::nn {

enum class ScheduleType { constant, cosine, linear, step };

struct ScheduleConfig {
  ScheduleType type = ScheduleType::cosine;
  double lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;
  int64_t step_size = 1000;  ///< for step decay
  double gamma = 0.1;        ///< for step decay
};

ScheduleType parse_schedule_type(const std::string& s);  ///< throws InputError

class LrSchedule {
 public:
  explicit LrSchedule(const ScheduleConfig& c) : c_(c) {}
  double lr(int64_t step) const;
  const ScheduleConfig& config() const { return c_; }

 private:
  ScheduleConfig c_;
};

}  // namespace kiln::nn
