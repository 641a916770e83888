// Which process of a data-parallel job this is, read once from the launcher's
// environment: Open MPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK /
// _LOCAL_SIZE), else Slurm/PMI (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID /
// SLURM_NTASKS_PER_NODE, PMI_RANK / PMI_SIZE / MPI_LOCALRANKID /
// MPI_LOCALNRANKS), else a single process (rank 0 of 1). Reading the
// environment costs nothing, so a plain `kiln train` pays no MPI start-up.
//
// Tasks read their shard of the data from here (rank, world). The trainer
// keeps it equal to its communicator's view: when it runs with an explicit
// communicator (a one-process baseline inside an mpirun test) it installs a
// ProcessInfoOverride for the duration of the run.
#pragma once

#include <string>

namespace kiln {

struct ProcessInfo {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  int local_world = 1;  ///< processes on this node (1 when the launcher does not say)
  std::string launcher = "none";  ///< "openmpi", "slurm", "pmi" or "none"
  bool is_root() const { return rank == 0; }
};

/// The process's place in the job (parsed on first call; malformed variables
/// are an InputError naming the variable), or the innermost live override.
const ProcessInfo& process_info();

/// Makes process_info() return `p` until destroyed (then the previous value
/// again). Overrides nest; not thread-safe (set them up on the main thread
/// before work that reads process_info() starts).
class ProcessInfoOverride {
 public:
  explicit ProcessInfoOverride(const ProcessInfo& p);
  ~ProcessInfoOverride();
  ProcessInfoOverride(const ProcessInfoOverride&) = delete;
  ProcessInfoOverride& operator=(const ProcessInfoOverride&) = delete;

 private:
  ProcessInfo value_;
  const ProcessInfo* previous_;
};

}  // namespace kiln
