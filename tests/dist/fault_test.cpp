// Faults end the job instead of hanging it. The driver tests (Fault.*) run
// `mpirun -np 2` of this same binary as a worker (FaultWorker.*, which only
// runs when KILN_TEST_FAULT is set): a real 2-process training run in which
// rank 1, at step 3, either
//   kill   dies (SIGKILL): the launcher ends rank 0, which says which
//          collective it was in;
//   stall  stops calling collectives (sleeps): rank 0's gradient all-reduce
//          times out after dist.timeout_s and aborts the job, naming itself
//          and the operation.
// Either way mpirun exits non-zero, within dist.timeout_s (plus the time MPI
// takes to tear the job down) of the fault.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <thread>

#include "runtime/process_info.h"
#include "trainers/config.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

constexpr int kTimeoutS = 3;

int64_t now_ns() {
  // steady_clock is CLOCK_MONOTONIC on Linux: one clock for every process.
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

TEST(FaultWorker, Train) {
  const char* mode = std::getenv("KILN_TEST_FAULT");
  if (!mode) GTEST_SKIP() << "runs only as the worker of the Fault tests";
  const std::string m = mode;
  const char* dir = std::getenv("KILN_TEST_FAULT_DIR");
  ASSERT_NE(dir, nullptr);
  TrainConfig cfg = load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml",
                                {"output_dir=" + std::string(dir), "train.max_steps=20", "train.checkpoint_every=0",
                                 "dist.timeout_s=" + std::to_string(kTimeoutS), "dist.bucket_mb=0.01"});
  TrainOptions o;
  o.before_step = [m](int64_t step, nn::Module&) {
    if (process_info().rank != 1 || step != 2) return;
    std::fprintf(stderr, "KILN_FAULT_INJECTED %lld\n", static_cast<long long>(now_ns()));
    std::fflush(stderr);
    if (m == "kill") raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::seconds(120));  // stall: never reach the next collective
  };
  train(cfg, o);
  FAIL() << "rank " << process_info().rank << " finished a run that should have ended in a fault";
}

struct Outcome {
  int status = 0;            // mpirun's exit status
  std::string output;        // stdout + stderr of every rank
  double after_fault_s = -1; // from the fault to mpirun's exit
};

Outcome run_worker(const std::string& mode) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_fault_" + mode + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string cmd = "KILN_TEST_FAULT=" + mode + " KILN_TEST_FAULT_DIR=" + dir.string() + " " KILN_MPIEXEC
                          " -np 2 --oversubscribe /proc/" + std::to_string(::getpid()) +
                          "/exe --gtest_filter=FaultWorker.* 2>&1";
  Outcome o;
  FILE* p = ::popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr) << cmd;
  if (!p) return o;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) o.output += buf;
  const int st = ::pclose(p);
  const int64_t end = now_ns();
  o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  std::smatch mt;
  if (std::regex_search(o.output, mt, std::regex("KILN_FAULT_INJECTED (\\d+)")))
    o.after_fault_s = static_cast<double>(end - std::stoll(mt[1].str())) * 1e-9;
  fs::remove_all(dir);
  return o;
}

TEST(Fault, KilledRankEndsTheJob) {
  if (std::getenv("KILN_TEST_FAULT")) GTEST_SKIP() << "worker process";
  const Outcome o = run_worker("kill");
  EXPECT_NE(o.status, 0) << o.output;
  ASSERT_GE(o.after_fault_s, 0) << "the fault was never injected:\n" << o.output;
  EXPECT_LT(o.after_fault_s, kTimeoutS + 5.0) << o.output;
  // Rank 0 names itself and what it was doing (the launcher's SIGTERM, or
  // an MPI error if the transport noticed first).
  EXPECT_TRUE(std::regex_search(o.output, std::regex("kiln: rank 0: (terminated by signal|MPI error during)")))
      << o.output;
  EXPECT_TRUE(std::regex_search(o.output, std::regex("kiln: rank 0: .*(all_reduce|reduce_scatter|all_gather|"
                                                     "broadcast|barrier|no collective in flight)")))
      << o.output;
}

TEST(Fault, StuckRankTimesOutNamingTheOperation) {
  if (std::getenv("KILN_TEST_FAULT")) GTEST_SKIP() << "worker process";
  const Outcome o = run_worker("stall");
  EXPECT_NE(o.status, 0) << o.output;
  ASSERT_GE(o.after_fault_s, 0) << "the fault was never injected:\n" << o.output;
  EXPECT_GT(o.after_fault_s, kTimeoutS - 0.5) << o.output;
  EXPECT_LT(o.after_fault_s, kTimeoutS + 10.0) << o.output;
  // Rank 0 waits in the step's first collective: the all-reduce of the
  // step's token counts (before any gradient bucket), named with its size.
  EXPECT_TRUE(std::regex_search(
      o.output, std::regex("kiln: rank 0: all_reduce(_values)? '(step token counts|grad bucket [0-9]+/[0-9]+)' "
                           "\\([^)]*\\) did not complete within dist.timeout_s = 3 s")))
      << o.output;
}

}  // namespace
}  // namespace kiln
