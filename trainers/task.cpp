#include "trainers/task.h"

namespace kiln {

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::val: return "val";
    case Split::test: return "test";
  }
  return "?";
}

Communicator& TaskContext::communicator() const {
  KILN_CHECK(comm != nullptr, "TaskContext: no communicator (use single_process_context for one process)");
  return *comm;
}

TaskContext single_process_context(Device device, DType compute, const BatchPlan& plan) {
  // One world-of-one communicator serves every such context of the process
  // (it holds no state: every collective is the identity).
  static const std::unique_ptr<Communicator> single = make_single_communicator();
  TaskContext ctx;
  ctx.device = device;
  ctx.compute = compute;
  ctx.plan = plan;
  ctx.comm = single.get();
  return ctx;
}

}  // namespace kiln
