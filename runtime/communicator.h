// Communicator: the collectives data parallelism needs, behind one small
// interface with three backends (design decision 5):
//
//   single  world 1, no MPI at all: a plain `kiln train` pays nothing.
//   mpi     CPU tensors, through MPI non-blocking collectives progressed by a
//           communication thread (so a CPU all-reduce really overlaps the
//           rest of backward); how data parallelism is tested without a GPU.
//   nccl    CUDA tensors, on a communication stream ordered against the
//           compute stream with events; the NCCL unique id travels by MPI
//           broadcast. CPU tensors given to it go through its MPI side.
//
// Every tensor collective has an async variant returning a CommHandle; the
// blocking one is async + wait. Collectives are *in order*: every rank must
// issue the same collectives in the same order (as with MPI and NCCL).
//
// Faults never hang: an op that does not finish within `timeout_s` (a dead or
// stuck peer, mismatched collectives), an MPI error, or an NCCL async error
// prints one line naming this rank, the operation and its label
//   kiln: rank 1: all_reduce 'grad bucket 2/3' (1.2 MB) did not complete within dist.timeout_s = 5 s ...
// and aborts the whole job (MPI_Abort), so every rank exits non-zero. A rank
// killed by the launcher because another one died says which operation it
// was in before it exits (status 143).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/tensor.h"

namespace kiln {

enum class ReduceOp {
  sum,
  avg,  ///< sum, then multiplied by 1 / world (exact for power-of-two worlds)
  max,
};

/// An issued collective. After wait() returns, work the caller issues next
/// sees the result: the host has blocked until an MPI op finished; for NCCL
/// the compute stream of the tensor's device waits for the communication
/// stream (no host block). wait() is idempotent; destroying an unwaited
/// handle waits.
class CommHandle {
 public:
  virtual ~CommHandle() = default;
  virtual void wait() = 0;
  /// True once the op has finished (never blocks; NCCL: the event completed).
  virtual bool done() = 0;
};

struct CommOptions {
  double timeout_s = 600;  ///< dist.timeout_s: bound on any one collective
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool is_root() const { return rank_ == 0; }
  /// "single", "mpi" or "nccl".
  virtual const char* backend() const = 0;

  // --- tensor collectives (in place unless noted). `what` labels the op in
  // fault messages ("grad bucket 3/7"); dtypes: f32, f64, i32 for reductions
  // (bf16 too on NCCL); any dtype for broadcast and all-gather.

  /// t ← Σ_r t_r (or the mean), on every rank.
  virtual std::unique_ptr<CommHandle> all_reduce_async(const Tensor& t, ReduceOp op, const std::string& what = "") = 0;
  /// t ← rank `root`'s t, on every rank.
  virtual std::unique_ptr<CommHandle> broadcast_async(const Tensor& t, int root, const std::string& what = "") = 0;
  /// out (n) ← chunk `rank` of Σ_r in_r, where in is (world · n) elements
  /// read as world consecutive chunks of n. in and out must not overlap.
  virtual std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op,
                                                           const std::string& what = "") = 0;
  /// out (world · n) ← in_0 ‖ in_1 ‖ ... (in is n elements). In place when
  /// `in` is exactly chunk `rank` of `out` (a view of it), else disjoint.
  virtual std::unique_ptr<CommHandle> all_gather_async(const Tensor& in, const Tensor& out,
                                                       const std::string& what = "") = 0;

  void all_reduce(const Tensor& t, ReduceOp op, const std::string& what = "") { all_reduce_async(t, op, what)->wait(); }
  void broadcast(const Tensor& t, int root, const std::string& what = "") { broadcast_async(t, root, what)->wait(); }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, const std::string& what = "") {
    reduce_scatter_async(in, out, op, what)->wait();
  }
  void all_gather(const Tensor& in, const Tensor& out, const std::string& what = "") {
    all_gather_async(in, out, what)->wait();
  }

  // --- host values (blocking; always over MPI, whatever the tensor backend).

  /// Blocks until every rank arrives (bounded by the timeout like any op).
  virtual void barrier(const std::string& what = "barrier") = 0;
  /// v ← Σ_r v_r (or the mean) elementwise; every rank passes the same size.
  virtual void all_reduce_values(std::vector<double>& v, ReduceOp op, const std::string& what = "") = 0;
  /// s ← rank `root`'s s (any length).
  virtual void broadcast_string(std::string& s, int root, const std::string& what = "") = 0;

  /// Prints "kiln: rank R: <why>" and ends the whole job with `status`
  /// (MPI_Abort when world > 1; exit otherwise). For errors one rank hits
  /// alone, so the others do not wait out the timeout.
  [[noreturn]] virtual void abort(const std::string& why, int status) = 0;

 protected:
  Communicator(int rank, int world) : rank_(rank), world_(world) {}

 private:
  int rank_ = 0;
  int world_ = 1;
};

/// The communicator for this process (per process_info()): single when the
/// world is 1 (no MPI_Init), else MPI for a CPU `device` or NCCL (one GPU per
/// local rank; `device` must be that GPU) for a CUDA one. Initializes MPI once
/// per process (MPI_THREAD_MULTIPLE; finalized at exit); creating further
/// communicators is collective (every rank must create them in the same order).
std::unique_ptr<Communicator> make_communicator(Device device, const CommOptions& opt = {});

/// A world-of-one communicator: every collective is the identity (all-gather
/// and reduce-scatter copy). What make_communicator returns without a launcher.
std::unique_ptr<Communicator> make_single_communicator();

/// An NCCL communicator on `device` (CUDA) even for a world of one, where it
/// needs no MPI (the all-reduce benchmark and the GPU tests use it on a
/// single GPU). Throws Error in a CPU-only build.
std::unique_ptr<Communicator> make_nccl_communicator(Device device, const CommOptions& opt = {});

/// Exit status of a rank that ends the job because a collective failed or
/// timed out (MPI errors, NCCL async errors, dist.timeout_s).
constexpr int kCommFailureStatus = 3;

/// "12.5 MB": sizes in fault messages and logs.
std::string format_bytes(double bytes);

}  // namespace kiln
