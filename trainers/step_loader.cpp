#include "trainers/step_loader.h"

#include <chrono>

namespace kiln {

StepLoader::StepLoader(Device device, std::vector<BatchArray> arrays, Fill fill, bool background)
    : device_(device), arrays_(std::move(arrays)), fill_(std::move(fill)), background_(background) {
  KILN_CHECK(fill_, "StepLoader: no fill function");
  const bool gpu = device_.is_cuda();
  if (gpu) copy_stream_ = Stream(device_, /*non_blocking=*/true);
  for (Slot& s : slots_) {
    for (const BatchArray& a : arrays_) {
      Tensor t = Tensor::empty(a.shape, a.dtype, device_, a.name);
      if (gpu) {
        s.host.emplace_back(t.nbytes());
        s.host_ptrs.push_back(s.host.back().data());
      } else {
        s.host_ptrs.push_back(t.raw());  // the CPU fills the arrays it hands out
      }
      s.device.push_back(std::move(t));
    }
    if (gpu) {
      s.copied = Event(device_);
      s.consumed = Event(device_);
    }
  }
  if (background_) thread_ = std::thread([this] { loader_main(); });
}

StepLoader::~StepLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Uploads may still read the pinned buffers this object frees.
  try {
    if (device_.is_cuda()) copy_stream_.synchronize();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln: warning: %s\n", e.what());
  }
}

void StepLoader::fill_slot(int k) {
  Slot& s = slots_[k];
  // The upload issued from this slot's host buffers two steps ago must be
  // done before they are overwritten; it normally is long since. Polled, so
  // the wait stays on this thread (the loader's) and asks nothing of the
  // training thread.
  while (!s.copied.done()) std::this_thread::sleep_for(std::chrono::microseconds(20));
  Filled f = fill_(s.host_ptrs);
  std::lock_guard<std::mutex> lock(mu_);
  s.result = std::move(f);
  s.filled = true;
}

void StepLoader::loader_main() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || requested_ >= 0; });
    if (stop_) return;
    const int k = requested_;
    requested_ = -1;
    busy_ = true;
    lock.unlock();
    std::exception_ptr err;
    try {
      fill_slot(k);
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    if (err) error_ = err;
    busy_ = false;
    cv_.notify_all();
  }
}

void StepLoader::wait_idle(std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [&] { return !busy_ && requested_ < 0; });
}

const StepLoader::Step& StepLoader::next() {
  const int k = next_slot_;
  cudaStream_t compute = compute_stream(device_);
  std::unique_lock<std::mutex> lock(mu_);
  // Every kernel of the previous step is issued by now: its arrays are free
  // once the compute stream passes this point.
  if (prev_slot_ >= 0 && device_.is_cuda()) {
    slots_[prev_slot_].consumed.record(compute);
    slots_[prev_slot_].used = true;
  }
  if (background_) wait_idle(lock);
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  Slot& s = slots_[k];
  if (!s.filled) {  // the first step, num_workers 0, or after reset()
    lock.unlock();
    fill_slot(k);
    lock.lock();
  }
  if (device_.is_cuda()) {
    cudaStream_t copy = copy_stream_.get();
    if (s.used) s.consumed.wait(copy);  // the step that last read these device arrays
    for (size_t i = 0; i < arrays_.size(); ++i)
      copy_to_device_async(s.device[i].raw(), s.host_ptrs[i], s.device[i].nbytes(), device_, copy);
    s.copied.record(copy);
    s.copied.wait(compute);
  }
  current_.arrays = s.device;
  current_.batch = s.result.batch;
  s.filled = false;
  prev_slot_ = k;
  next_slot_ = k ^ 1;
  if (background_) {
    requested_ = next_slot_;
    cv_.notify_all();
  }
  return current_;
}

nlohmann::json StepLoader::position(const std::function<nlohmann::json()>& current) {
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(lock);
  if (slots_[next_slot_].filled) return slots_[next_slot_].result.position;
  return current();
}

void StepLoader::reset() {
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(lock);
  for (Slot& s : slots_) s.filled = false;
  error_ = nullptr;
}

}  // namespace kiln
