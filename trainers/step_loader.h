// StepLoader: a task's training batches, one optimizer step at a time,
// prepared a step ahead and uploaded without the host waiting for the GPU.
//
// A step's batch is a few arrays (images (accum·B, H, W, C) f32 and labels
// (accum·B) i32; tokens x and y (accum·B, T) i32). The task gives their
// shapes and a `fill` function that writes one step into host memory (its
// sampler, its dataset). Two slots alternate:
//
//   step s:   next()  waits for slot s%2's fill (done during step s-1),
//                     copies it host → device on the copy stream (from page-
//                     locked memory: cudaMemcpyAsync really is async), makes
//                     the compute stream wait for the copy's event, and starts
//                     filling slot (s+1)%2 with step s+1 on the loader thread
//                     (data.num_workers 1) — or fills it on the next call
//                     (num_workers 0).
//
// Reuse is ordered by events, never by a host wait on the training thread:
// the copy into a slot's device arrays waits (on the copy stream) for the
// compute stream to have finished the step that last used them, and the
// loader thread waits for the copy out of a slot's host buffer before it
// overwrites it (polling Event::done from the loader thread). On the CPU the
// device arrays are the host arrays (no copy at all) and the loader thread
// still fills the next step while this one computes.
//
// Checkpoints: the task's data position must be that of the first step not
// begun, not of what the loader read ahead, so `fill` reports the position
// *before* it read, and position() returns the one of a slot filled but not
// yet handed out.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/allocator.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"
#include "trainers/task.h"

namespace kiln {

/// One array of a step's batch.
struct BatchArray {
  std::string name;  ///< names the device tensor ("images", "labels", "tokens")
  DType dtype = DType::f32;
  Shape shape;       ///< the whole step's (all micro-batches)
};

class StepLoader {
 public:
  /// What `fill` wrote.
  struct Filled {
    StepBatch batch;          ///< the step's counts on this rank
    nlohmann::json position;  ///< the data position before this step was read
  };
  /// Writes one step: host[i] has room for arrays[i] (its shape, its dtype).
  /// Runs on the loader thread when background; throws like any data code
  /// (the error surfaces in next()).
  using Fill = std::function<Filled(const std::vector<void*>& host)>;

  StepLoader(Device device, std::vector<BatchArray> arrays, Fill fill, bool background);
  ~StepLoader();
  StepLoader(const StepLoader&) = delete;
  StepLoader& operator=(const StepLoader&) = delete;

  /// A step on the device, ready for work issued on the compute stream.
  struct Step {
    std::vector<Tensor> arrays;  ///< in BatchArray order; valid until the call after next
    StepBatch batch;
  };
  /// The next step (see the header comment). Never waits for the device.
  const Step& next();

  /// The data position of the first step next() has not returned yet:
  /// a read-ahead slot's position, else `current()` (the task's sampler as
  /// it stands). Waits for a fill in progress.
  nlohmann::json position(const std::function<nlohmann::json()>& current);
  /// Drops whatever was read ahead (call before restoring a data position).
  void reset();

  bool background() const { return background_; }

 private:
  struct Slot {
    std::vector<PinnedBuffer> host;  // GPU: page-locked staging buffers
    std::vector<void*> host_ptrs;    // what fill writes (GPU: host; CPU: the device tensors)
    std::vector<Tensor> device;      // the arrays next() hands out
    Event copied;                    // copy stream: the upload from `host` is done
    Event consumed;                  // compute stream: the last step using `device` is issued
    bool used = false;               // consumed has been recorded
    bool filled = false;
    Filled result;
  };

  void fill_slot(int k);  // runs fill_ into slot k (any thread)
  void loader_main();
  void wait_idle(std::unique_lock<std::mutex>& lock);

  Device device_;
  std::vector<BatchArray> arrays_;
  Fill fill_;
  bool background_;
  Stream copy_stream_;
  Slot slots_[2];
  int next_slot_ = 0;  // the slot the next step is in
  int prev_slot_ = -1; // the slot the previous step used (-1: none)
  Step current_;

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  int requested_ = -1;  // a slot the loader thread should fill
  bool busy_ = false;   // the loader thread is filling
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace kiln
