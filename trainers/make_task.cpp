// The task table: which Task a config's data.type builds. A new task is its
// class and one line here; the model it trains comes from the model registry
// (trainers/models.h), so no task names a model type.
#include <functional>
#include <memory>

#include "trainers/image_task.h"
#include "trainers/lm_task.h"
#include "trainers/sft_task.h"
#include "trainers/trainer.h"

namespace kiln {

namespace {

using TaskFactory = std::function<std::unique_ptr<Task>(const TrainConfig&, const TaskContext&)>;

template <class T>
std::unique_ptr<Task> make(const TrainConfig& cfg, const TaskContext& ctx) {
  return std::make_unique<T>(cfg, ctx);
}

struct TaskEntry {
  DatasetType data;
  TaskFactory build;
};

const TaskEntry kTasks[] = {
    {DatasetType::fashion_mnist, make<ImageClassificationTask>},
    {DatasetType::mnist, make<ImageClassificationTask>},
    {DatasetType::idx, make<ImageClassificationTask>},
    {DatasetType::tokens, make<LanguageModelTask>},
    {DatasetType::sft, make<SftTask>},
};

}  // namespace

std::unique_ptr<Task> make_task(const TrainConfig& cfg, const TaskContext& ctx) {
  for (const TaskEntry& e : kTasks)
    if (e.data == cfg.data.type) return e.build(cfg, ctx);
  throw InputError("data.type: SFT data is not implemented yet (it arrives with the SFT recipe); this kiln trains "
                   "image and token tasks");
}

}  // namespace kiln
