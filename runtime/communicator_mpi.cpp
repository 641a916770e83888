// MPI backend (CPU tensors) and the process-wide MPI state every multi-process
// communicator shares: MPI_Init_thread once, MPI_Finalize at exit, the error
// handler, the SIGTERM note and the fatal path.
//
// Overlap on the CPU: Open MPI progresses a non-blocking collective only
// inside MPI calls, so a communication thread per communicator issues the
// MPI_I* call and polls MPI_Test until it completes, while the caller goes on
// with backward. The same poll enforces dist.timeout_s: an op that has not
// completed by its deadline aborts the job with a line naming the rank and
// the op. Ops run one at a time, in submission order (every rank submits
// the same sequence, which is what keeps the collectives matched).
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "runtime/communicator.h"
#include "runtime/communicator_detail.h"
#include "runtime/process_info.h"

namespace kiln::detail {

namespace {

using Clock = std::chrono::steady_clock;

// --- process-wide state ------------------------------------------------------

std::once_flag g_init_once;
bool g_we_initialized = false;
int g_thread_level = MPI_THREAD_SINGLE;
std::mutex g_mpi_mutex;  // serializes MPI calls when the library lacks MPI_THREAD_MULTIPLE
std::atomic<bool> g_aborting{false};
std::atomic<bool> g_mpi_up{false};
// Read by the SIGTERM handler: plain char arrays (no allocation there).
char g_prefix[64] = "kiln: ";
char g_current_op[512] = "no collective in flight";
MPI_Errhandler g_errhandler = MPI_ERRHANDLER_NULL;

/// Holds the global MPI mutex when the library is not thread-multiple.
class MpiLock {
 public:
  MpiLock() : lock_(g_mpi_mutex, std::defer_lock) {
    if (g_thread_level < MPI_THREAD_MULTIPLE) lock_.lock();
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

void finalize_at_exit() {
  if (!g_we_initialized || g_aborting.load()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

// When one rank dies, the launcher ends the others with SIGTERM; say what
// this rank was doing, then exit as the signal would have.
extern "C" void on_sigterm(int sig) {
  const char* parts[] = {g_prefix, "terminated by signal ", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                         " (the launcher ends the job when a rank fails) while in ", g_current_op, "\n"};
  for (const char* p : parts) {
    ssize_t ignored = ::write(2, p, std::strlen(p));
    (void)ignored;
  }
  _exit(128 + sig);
}

extern "C" void on_mpi_error(MPI_Comm*, int* code, ...) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(*code, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "MPI error %d", *code);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  comm_fatal(rank, std::string("MPI error during ") + g_current_op + ": " + text +
                       " (a peer rank probably died; ending the job)");
}

void init_mpi() {
  int already = 0;
  KILN_MPI_CHECK(MPI_Initialized(&already));
  if (!already) {
    int provided = MPI_THREAD_SINGLE;
    KILN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
    g_we_initialized = true;
    std::atexit(finalize_at_exit);
  }
  KILN_MPI_CHECK(MPI_Query_thread(&g_thread_level));
  int rank = 0, world = 1;
  KILN_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  KILN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  const ProcessInfo& pi = process_info();
  KILN_CHECK(world == pi.world && rank == pi.rank,
             "MPI says rank " << rank << " of " << world << ", the launcher's environment (" << pi.launcher
                              << ") says rank " << pi.rank << " of " << pi.world
                              << ": was kiln started by another MPI than the one it was built with?");
  std::snprintf(g_prefix, sizeof g_prefix, "kiln: rank %d: ", rank);
  KILN_MPI_CHECK(MPI_Comm_create_errhandler(on_mpi_error, &g_errhandler));
  KILN_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, g_errhandler));
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  g_mpi_up = true;
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::bf16:
    case DType::f16:
    case DType::u16: return MPI_UINT16_T;
    case DType::u8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::max ? MPI_MAX : MPI_SUM; }

// MPI counts are ints: bigger buffers go in pieces of this many elements.
constexpr int64_t kMaxCount = int64_t{1} << 30;

template <typename T>
void scale(void* p, int64_t n, double s) {
  T* x = static_cast<T*>(p);
  const T f = static_cast<T>(s);
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

void scale_by(void* p, DType t, int64_t n, int world) {
  if (t == DType::f32) scale<float>(p, n, 1.0 / world);
  else if (t == DType::f64) scale<double>(p, n, 1.0 / world);
}

}  // namespace

void set_current_op(const std::string& text) {
  const size_t n = std::min(text.size(), sizeof g_current_op - 1);
  std::memcpy(g_current_op, text.data(), n);
  g_current_op[n] = '\0';
}

void clear_current_op() { set_current_op("no collective in flight (computing)"); }

void comm_fatal(int rank, const std::string& msg, int status) {
  if (g_aborting.exchange(true)) {
    // Another thread is already ending the job.
    std::this_thread::sleep_for(std::chrono::seconds(5));
    std::_Exit(status);
  }
  std::fprintf(stderr, "kiln: rank %d: %s\n", rank, msg.c_str());
  std::fflush(stderr);
  if (g_mpi_up) MPI_Abort(MPI_COMM_WORLD, status);
  std::_Exit(status);
}

namespace {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int rank, int world, MPI_Comm comm, const CommOptions& opt)
      : Communicator(rank, world), comm_(comm), opt_(opt) {
    worker_ = std::thread([this] { worker_loop(); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    if (!g_aborting.load()) {
      MpiLock lock;
      MPI_Comm_free(&comm_);
    }
  }

  const char* backend() const override { return "mpi"; }

  std::unique_ptr<CommHandle> all_reduce_async(const Tensor& t, ReduceOp op, const std::string& what) override {
    check_reduce("all_reduce", t, op, /*allow_lowp=*/false);
    require_cpu("all_reduce", t);
    auto o = std::make_shared<Op>(Kind::all_reduce, "all_reduce", what);
    o->recv = t.raw();
    o->count = t.numel();
    o->dtype = t.dtype();
    o->op = op;
    o->keep = {t};
    o->bytes = static_cast<double>(t.nbytes());
    return submit(o);
  }

  std::unique_ptr<CommHandle> broadcast_async(const Tensor& t, int root, const std::string& what) override {
    KILN_CHECK(t.defined(), "broadcast: undefined tensor");
    check_root("broadcast", root, world());
    require_cpu("broadcast", t);
    auto o = std::make_shared<Op>(Kind::broadcast, "broadcast", what);
    o->recv = t.raw();
    o->count = t.numel();
    o->dtype = t.dtype();
    o->root = root;
    o->keep = {t};
    o->bytes = static_cast<double>(t.nbytes());
    return submit(o);
  }

  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op,
                                                   const std::string& what) override {
    check_reduce_scatter(in, out, op, world(), /*allow_lowp=*/false);
    require_cpu("reduce_scatter", in);
    KILN_CHECK(out.numel() <= INT_MAX,
               "reduce_scatter: " << out.numel() << " elements per rank exceed MPI's int count");
    auto o = std::make_shared<Op>(Kind::reduce_scatter, "reduce_scatter", what);
    o->send = in.raw();
    o->recv = out.raw();
    o->count = out.numel();
    o->dtype = in.dtype();
    o->op = op;
    o->keep = {in, out};
    o->bytes = static_cast<double>(in.nbytes());
    return submit(o);
  }

  std::unique_ptr<CommHandle> all_gather_async(const Tensor& in, const Tensor& out, const std::string& what) override {
    check_all_gather(in, out, world());
    require_cpu("all_gather", in);
    KILN_CHECK(in.numel() <= INT_MAX, "all_gather: " << in.numel() << " elements per rank exceed MPI's int count");
    auto o = std::make_shared<Op>(Kind::all_gather, "all_gather", what);
    o->send = all_gather_in_place(in, out, rank()) ? MPI_IN_PLACE : in.raw();
    o->recv = out.raw();
    o->count = in.numel();
    o->dtype = in.dtype();
    o->keep = {in, out};
    o->bytes = static_cast<double>(out.nbytes());
    return submit(o);
  }

  void barrier(const std::string& what) override {
    auto o = std::make_shared<Op>(Kind::barrier, "barrier", what);
    submit(o)->wait();
  }

  void all_reduce_values(std::vector<double>& v, ReduceOp op, const std::string& what) override {
    auto o = std::make_shared<Op>(Kind::all_reduce, "all_reduce_values", what);
    o->recv = v.data();
    o->count = static_cast<int64_t>(v.size());
    o->dtype = DType::f64;
    o->op = op;
    o->bytes = static_cast<double>(v.size() * sizeof(double));
    submit(o)->wait();
  }

  void broadcast_string(std::string& s, int root, const std::string& what) override {
    check_root("broadcast_string", root, world());
    auto o = std::make_shared<Op>(Kind::broadcast_string, "broadcast_string", what);
    o->str = &s;
    o->root = root;
    o->bytes = static_cast<double>(s.size());
    submit(o)->wait();
  }

  [[noreturn]] void abort(const std::string& why, int status) override { comm_fatal(rank(), why, status); }

 private:
  enum class Kind { all_reduce, broadcast, reduce_scatter, all_gather, barrier, broadcast_string };

  struct Op {
    Op(Kind k, const char* n, const std::string& w) : kind(k), name(n), what(w) {}
    Kind kind;
    const char* name;
    std::string what;
    const void* send = nullptr;
    void* recv = nullptr;
    int64_t count = 0;  // all_reduce, broadcast: all elements; reduce_scatter, all_gather: per rank
    DType dtype = DType::f32;
    ReduceOp op = ReduceOp::sum;
    int root = 0;
    std::string* str = nullptr;
    double bytes = 0;
    std::vector<Tensor> keep;  // storage stays alive while the op is in flight
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::string error;
  };

  class Handle final : public CommHandle {
   public:
    explicit Handle(std::shared_ptr<Op> op) : op_(std::move(op)) {}
    ~Handle() override {
      std::unique_lock<std::mutex> l(op_->m);
      op_->cv.wait(l, [&] { return op_->done; });
    }
    void wait() override {
      std::unique_lock<std::mutex> l(op_->m);
      op_->cv.wait(l, [&] { return op_->done; });
      if (!op_->error.empty()) throw Error(op_->error);
    }
    bool done() override {
      std::lock_guard<std::mutex> l(op_->m);
      return op_->done;
    }

   private:
    std::shared_ptr<Op> op_;
  };

  static void require_cpu(const char* name, const Tensor& t) {
    KILN_CHECK(t.device().is_cpu(), name << ": the MPI backend moves CPU tensors; '" << t.name() << "' is on "
                                          << t.device().str() << " (GPU tensors go through NCCL)");
  }

  std::unique_ptr<CommHandle> submit(const std::shared_ptr<Op>& o) {
    {
      std::lock_guard<std::mutex> g(mu_);
      queue_.push_back(o);
    }
    cv_.notify_all();
    return std::make_unique<Handle>(o);
  }

  void worker_loop() {
    for (;;) {
      std::shared_ptr<Op> o;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and drained
        o = queue_.front();
        queue_.pop_front();
      }
      std::string error;
      try {
        run(*o);
      } catch (const std::exception& e) {
        error = e.what();
      }
      {
        std::lock_guard<std::mutex> l(o->m);
        o->error = error;
        o->done = true;
        o->keep.clear();
      }
      o->cv.notify_all();
    }
  }

  // Polls `req` until it completes; past the deadline the job ends. Yields
  // first (latency), then sleeps in short naps so the poll does not take a
  // core from the compute threads.
  void complete(MPI_Request& req, const std::string& label, Clock::time_point deadline) {
    for (int spins = 0;; ++spins) {
      int flag = 0;
      {
        MpiLock lock;
        KILN_MPI_CHECK(MPI_Test(&req, &flag, MPI_STATUS_IGNORE));
      }
      if (flag) return;
      if (Clock::now() > deadline) {
        std::ostringstream os;
        os << label << " did not complete within dist.timeout_s = " << opt_.timeout_s
           << " s: another rank died, is stuck, or issued a different collective; ending the job";
        comm_fatal(rank(), os.str());
      }
      if (spins < 64) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(spins < 1024 ? 20 : 200));
    }
  }

  void run(Op& o) {
    const std::string label = op_label(o.name, o.what, o.bytes);
    set_current_op(label);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(opt_.timeout_s));
    const MPI_Datatype type = mpi_type(o.dtype);
    const size_t esize = dtype_size(o.dtype);
    MPI_Request req = MPI_REQUEST_NULL;
    auto issue = [&](auto&& post) {
      {
        MpiLock lock;
        KILN_MPI_CHECK(post());
      }
      complete(req, label, deadline);
    };
    switch (o.kind) {
      case Kind::all_reduce:
        for (int64_t off = 0; off < o.count; off += kMaxCount) {
          const int n = static_cast<int>(std::min(kMaxCount, o.count - off));
          char* p = static_cast<char*>(o.recv) + off * static_cast<int64_t>(esize);
          issue([&] { return MPI_Iallreduce(MPI_IN_PLACE, p, n, type, mpi_op(o.op), comm_, &req); });
        }
        if (o.op == ReduceOp::avg) scale_by(o.recv, o.dtype, o.count, world());
        break;
      case Kind::broadcast:
        for (int64_t off = 0; off < o.count; off += kMaxCount) {
          const int n = static_cast<int>(std::min(kMaxCount, o.count - off));
          char* p = static_cast<char*>(o.recv) + off * static_cast<int64_t>(esize);
          issue([&] { return MPI_Ibcast(p, n, type, o.root, comm_, &req); });
        }
        break;
      case Kind::reduce_scatter:
        if (o.count > 0) {
          issue([&] {
            const int n = static_cast<int>(o.count);
            return MPI_Ireduce_scatter_block(o.send, o.recv, n, type, mpi_op(o.op), comm_, &req);
          });
          if (o.op == ReduceOp::avg) scale_by(o.recv, o.dtype, o.count, world());
        }
        break;
      case Kind::all_gather:
        if (o.count > 0) {
          const int n = static_cast<int>(o.count);
          issue([&] { return MPI_Iallgather(o.send, n, type, o.recv, n, type, comm_, &req); });
        }
        break;
      case Kind::barrier:
        issue([&] { return MPI_Ibarrier(comm_, &req); });
        break;
      case Kind::broadcast_string: {
        int64_t len = static_cast<int64_t>(o.str->size());
        issue([&] { return MPI_Ibcast(&len, 1, MPI_INT64_T, o.root, comm_, &req); });
        if (rank() != o.root) o.str->resize(static_cast<size_t>(len));
        for (int64_t off = 0; off < len; off += kMaxCount) {
          const int n = static_cast<int>(std::min(kMaxCount, len - off));
          char* p = &(*o.str)[static_cast<size_t>(off)];
          issue([&] { return MPI_Ibcast(p, n, MPI_CHAR, o.root, comm_, &req); });
        }
        break;
      }
    }
    clear_current_op();
  }

  MPI_Comm comm_;
  CommOptions opt_;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Op>> queue_;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& opt) {
  std::call_once(g_init_once, init_mpi);
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, world = 1;
  {
    MpiLock lock;
    KILN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    KILN_MPI_CHECK(MPI_Comm_set_errhandler(comm, g_errhandler));
    KILN_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    KILN_MPI_CHECK(MPI_Comm_size(comm, &world));
  }
  return std::make_unique<MpiCommunicator>(rank, world, comm, opt);
}

}  // namespace kiln::detail
