// Internal to runtime/communicator*.cpp: what the three backends share.
#pragma once

#include <memory>
#include <string>

#include "runtime/communicator.h"

namespace kiln::detail {

/// MPI communicator over a duplicate of MPI_COMM_WORLD (initializes MPI once
/// per process). Defined in communicator_mpi.cpp.
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& opt);

/// What this rank is doing, for the line a rank prints when the launcher
/// kills it (copied into a fixed buffer a signal handler can read).
void set_current_op(const std::string& text);
void clear_current_op();

/// Prints "kiln: rank R: <msg>" and ends the job: MPI_Abort when MPI is up,
/// else _Exit. Safe from any thread; a second caller just exits.
[[noreturn]] void comm_fatal(int rank, const std::string& msg, int status = kCommFailureStatus);

/// "all_reduce 'grad bucket 2/3' (1.2 MB)": an op as fault messages name it.
std::string op_label(const char* kind, const std::string& what, double bytes);

// Argument checks every backend applies before issuing (Error naming the
// tensors on a mismatch). Reductions take f32, f64 and i32 (`allow_lowp`
// adds bf16 and f16, which only NCCL reduces).
void check_reduce(const char* op_name, const Tensor& t, ReduceOp op, bool allow_lowp);
void check_root(const char* op_name, int root, int world);
void check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, int world, bool allow_lowp);
void check_all_gather(const Tensor& in, const Tensor& out, int world);
/// True when `in` is chunk `rank` of `out` (an in-place all-gather).
bool all_gather_in_place(const Tensor& in, const Tensor& out, int rank);

/// A handle for work that is already complete.
class ReadyHandle final : public CommHandle {
 public:
  void wait() override {}
  bool done() override { return true; }
};

}  // namespace kiln::detail
