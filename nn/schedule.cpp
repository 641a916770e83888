#include "nn/schedule.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace kiln::nn {

ScheduleType parse_schedule_type(const std::string& s) {
  if (s == "constant") return ScheduleType::constant;
  if (s == "cosine") return ScheduleType::cosine;
  if (s == "linear") return ScheduleType::linear;
  if (s == "step") return ScheduleType::step;
  throw InputError("schedule.type: unknown schedule '" + s + "' (expected constant, cosine, linear or step)");
}

double LrSchedule::lr(int64_t step) const {
  const double base = c_.lr;
  if (c_.warmup_steps > 0 && step < c_.warmup_steps)
    return base * static_cast<double>(step + 1) / static_cast<double>(c_.warmup_steps);
  const double min_lr = base * c_.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, c_.total_steps - c_.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - c_.warmup_steps) / static_cast<double>(decay_steps));
  switch (c_.type) {
    case ScheduleType::constant: return base;
    case ScheduleType::cosine: return min_lr + (base - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case ScheduleType::linear: return base + (min_lr - base) * progress;
    case ScheduleType::step: {
      const int64_t k = (step - c_.warmup_steps) / std::max<int64_t>(1, c_.step_size);
      return base * std::pow(c_.gamma, static_cast<double>(k));
    }
  }
  return base;
}

}  // namespace kiln::nn
