// NCCL backend (CUDA tensors). Not run on the development machines (no GPU):
// it compiles there and runs on GPU hosts.
//
// Ordering: each op records an event on the compute stream of the device,
// makes the communication stream wait for it (so the op sees everything
// compute issued before the call, e.g. the gradients backward just wrote),
// launches the NCCL collective on the communication stream and records a
// done event there. CommHandle::wait() makes the compute stream wait for the
// done event: no host block, so backward keeps running while a bucket
// reduces.
//
// Watchdog: a thread polls ncclCommGetAsyncError (a peer that died, a network
// error) and the oldest in-flight op's done event every 50 ms; an async
// error, or an op still running after dist.timeout_s, prints one line naming
// the rank and the op, aborts the NCCL communicator (so kernels stuck waiting
// for a peer return) and ends the job through MPI_Abort.
//
// The unique id travels by MPI broadcast (over the MPI communicator this one
// also uses for host values and CPU tensors). With a world of one no MPI is
// involved at all.
#include "runtime/communicator.h"
#include "runtime/communicator_detail.h"
#include "runtime/process_info.h"

#if KILN_WITH_CUDA

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "runtime/device_guard.h"
#include "runtime/stream.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::u8:
    case DType::u16: return ncclUint8;  // moved as bytes (broadcast, all-gather)
  }
  return ncclUint8;
}

// Element count in units of nccl_type(t).
size_t nccl_count(const Tensor& t) {
  return t.dtype() == DType::u16 ? t.nbytes() : static_cast<size_t>(t.numel());
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

using EventPtr = std::shared_ptr<CUevent_st>;

EventPtr make_event() {
  cudaEvent_t e = nullptr;
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return EventPtr(e, [](cudaEvent_t x) { cudaEventDestroy(x); });
}

class NcclHandle final : public CommHandle {
 public:
  NcclHandle(EventPtr done, Device device, std::vector<Tensor> keep)
      : done_(std::move(done)), device_(device), keep_(std::move(keep)) {}
  ~NcclHandle() override {
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kiln: warning: %s\n", e.what());
    }
  }
  void wait() override {
    if (waited_) return;
    detail::CudaDeviceGuard guard(device_.index);
    KILN_CUDA_CHECK(cudaStreamWaitEvent(compute_stream(device_), done_.get(), 0));
    waited_ = true;
    // From here the compute stream is ordered after the op, so the storage
    // may go back to the caching allocator (which reuses it on that stream).
    keep_.clear();
  }
  bool done() override { return cudaEventQuery(done_.get()) == cudaSuccess; }

 private:
  EventPtr done_;
  Device device_;
  std::vector<Tensor> keep_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Device device, std::unique_ptr<Communicator> host, const CommOptions& opt)
      : Communicator(host->rank(), host->world()), device_(device), host_(std::move(host)), opt_(opt) {
    KILN_CHECK(device.is_cuda(), "NCCL communicator: device " << device.str() << " is not a GPU");
    detail::CudaDeviceGuard guard(device_.index);
    stream_ = Stream(device_);
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    std::string blob(sizeof id.internal, '\0');
    if (rank() == 0) {
      KILN_NCCL_CHECK(ncclGetUniqueId(&id));
      std::memcpy(&blob[0], id.internal, sizeof id.internal);
    }
    host_->broadcast_string(blob, 0, "NCCL unique id");
    KILN_CHECK(blob.size() == sizeof id.internal, "NCCL unique id arrived with " << blob.size() << " bytes");
    std::memcpy(id.internal, blob.data(), sizeof id.internal);

    init_started_ = Clock::now();
    initializing_ = true;
    watchdog_ = std::thread([this] { watchdog_loop(); });
    const ncclResult_t r = ncclCommInitRank(&comm_, world(), id, rank());
    initializing_ = false;
    if (r != ncclSuccess) {
      stop_watchdog();
      detail::fail_nccl("ncclCommInitRank(&comm_, world, id, rank)", r, __FILE__, __LINE__);
    }
  }

  ~NcclCommunicator() override {
    stop_watchdog();
    if (comm_) {
      detail::CudaDeviceGuard guard(device_.index);
      KILN_CUDA_WARN(cudaStreamSynchronize(stream_.get()));
      ncclCommDestroy(comm_);
    }
  }

  const char* backend() const override { return "nccl"; }

  std::unique_ptr<CommHandle> all_reduce_async(const Tensor& t, ReduceOp op, const std::string& what) override {
    if (t.device().is_cpu()) return host_->all_reduce_async(t, op, what);
    detail::check_reduce("all_reduce", t, op, /*allow_lowp=*/true);
    require_device("all_reduce", t);
    return enqueue("all_reduce", what, static_cast<double>(t.nbytes()), {t}, [&](cudaStream_t s) {
      return ncclAllReduce(t.raw(), t.raw(), nccl_count(t), nccl_type(t.dtype()), nccl_op(op), comm_, s);
    });
  }

  std::unique_ptr<CommHandle> broadcast_async(const Tensor& t, int root, const std::string& what) override {
    if (t.device().is_cpu()) return host_->broadcast_async(t, root, what);
    KILN_CHECK(t.defined(), "broadcast: undefined tensor");
    detail::check_root("broadcast", root, world());
    require_device("broadcast", t);
    return enqueue("broadcast", what, static_cast<double>(t.nbytes()), {t}, [&](cudaStream_t s) {
      return ncclBroadcast(t.raw(), t.raw(), t.nbytes(), ncclUint8, root, comm_, s);
    });
  }

  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op,
                                                   const std::string& what) override {
    if (in.device().is_cpu()) return host_->reduce_scatter_async(in, out, op, what);
    detail::check_reduce_scatter(in, out, op, world(), /*allow_lowp=*/true);
    require_device("reduce_scatter", in);
    return enqueue("reduce_scatter", what, static_cast<double>(in.nbytes()), {in, out}, [&](cudaStream_t s) {
      return ncclReduceScatter(in.raw(), out.raw(), nccl_count(out), nccl_type(out.dtype()), nccl_op(op), comm_, s);
    });
  }

  std::unique_ptr<CommHandle> all_gather_async(const Tensor& in, const Tensor& out, const std::string& what) override {
    if (in.device().is_cpu()) return host_->all_gather_async(in, out, what);
    detail::check_all_gather(in, out, world());
    detail::all_gather_in_place(in, out, rank());  // NCCL detects in-place itself; this checks overlap
    require_device("all_gather", in);
    return enqueue("all_gather", what, static_cast<double>(out.nbytes()), {in, out}, [&](cudaStream_t s) {
      return ncclAllGather(in.raw(), out.raw(), in.nbytes(), ncclUint8, comm_, s);
    });
  }

  void barrier(const std::string& what) override { host_->barrier(what); }
  void all_reduce_values(std::vector<double>& v, ReduceOp op, const std::string& what) override {
    host_->all_reduce_values(v, op, what);
  }
  void broadcast_string(std::string& s, int root, const std::string& what) override {
    host_->broadcast_string(s, root, what);
  }
  [[noreturn]] void abort(const std::string& why, int status) override {
    if (comm_) ncclCommAbort(comm_);
    host_->abort(why, status);
    std::abort();  // not reached: the host side ends the job
  }

 private:
  struct Pending {
    EventPtr done;
    Clock::time_point start;
    std::string label;
  };

  void require_device(const char* name, const Tensor& t) const {
    KILN_CHECK(t.device() == device_, name << ": tensor '" << t.name() << "' is on " << t.device().str()
                                            << ", this NCCL communicator on " << device_.str());
  }

  template <typename Launch>
  std::unique_ptr<CommHandle> enqueue(const char* kind, const std::string& what, double bytes,
                                      std::vector<Tensor> keep, Launch&& launch) {
    detail::CudaDeviceGuard guard(device_.index);
    const std::string label = detail::op_label(kind, what, bytes);
    EventPtr ready = make_event();
    KILN_CUDA_CHECK(cudaEventRecord(ready.get(), compute_stream(device_)));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(stream_.get(), ready.get(), 0));
    KILN_NCCL_CHECK(launch(stream_.get()));
    EventPtr done = make_event();
    KILN_CUDA_CHECK(cudaEventRecord(done.get(), stream_.get()));
    {
      std::lock_guard<std::mutex> g(mu_);
      pending_.push_back({done, Clock::now(), label});
    }
    return std::make_unique<NcclHandle>(done, device_, std::move(keep));
  }

  void stop_watchdog() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  [[noreturn]] void fail(const std::string& msg) {
    if (comm_) ncclCommAbort(comm_);
    host_->abort(msg, kCommFailureStatus);
    std::abort();  // not reached
  }

  void watchdog_loop() {
    cudaSetDevice(device_.index);
    const auto timeout = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.timeout_s));
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      cv_.wait_for(l, std::chrono::milliseconds(50));
      if (stop_) break;
      if (initializing_) {
        if (Clock::now() - init_started_ > timeout) {
          std::ostringstream os;
          os << "ncclCommInitRank (" << world() << " ranks) did not complete within dist.timeout_s = "
             << opt_.timeout_s << " s: another rank died or cannot reach this one; ending the job";
          l.unlock();
          fail(os.str());
        }
        continue;
      }
      if (comm_) {
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
          std::ostringstream os;
          os << "NCCL async error during "
             << (pending_.empty() ? std::string("no collective in flight") : pending_.front().label) << ": "
             << ncclGetErrorString(async) << " (" << ncclGetLastError(comm_) << "); ending the job";
          l.unlock();
          fail(os.str());
        }
      }
      while (!pending_.empty()) {
        const cudaError_t q = cudaEventQuery(pending_.front().done.get());
        if (q == cudaSuccess) {
          pending_.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) {
          std::ostringstream os;
          os << "CUDA error while " << pending_.front().label << " ran: " << cudaGetErrorString(q)
             << "; ending the job";
          l.unlock();
          fail(os.str());
        }
        if (Clock::now() - pending_.front().start > timeout) {
          std::ostringstream os;
          os << pending_.front().label << " did not complete within dist.timeout_s = " << opt_.timeout_s
             << " s: another rank died, is stuck, or issued a different collective; ending the job";
          l.unlock();
          fail(os.str());
        }
        break;
      }
      if (pending_.empty()) detail::clear_current_op();
      else detail::set_current_op(pending_.front().label);
    }
  }

  Device device_;
  std::unique_ptr<Communicator> host_;
  CommOptions opt_;
  Stream stream_;
  ncclComm_t comm_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stop_ = false;
  std::atomic<bool> initializing_{false};
  Clock::time_point init_started_;
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Device device, const CommOptions& opt) {
  KILN_CHECK(device.is_cuda(), "make_nccl_communicator: " << device.str() << " is not a GPU");
  KILN_CHECK(opt.timeout_s > 0, "make_nccl_communicator: timeout_s must be positive, got " << opt.timeout_s);
  std::unique_ptr<Communicator> host =
      process_info().world > 1 ? detail::make_mpi_communicator(opt) : make_single_communicator();
  return std::make_unique<NcclCommunicator>(device, std::move(host), opt);
}

}  // namespace kiln

#else  // CPU-only build

namespace kiln {

std::unique_ptr<Communicator> make_nccl_communicator(Device device, const CommOptions&) {
  throw Error("NCCL communicator for " + device.str() + ": this kiln was built without CUDA (KILN_CUDA=OFF)");
}

}  // namespace kiln

#endif
