// Which process of a data-parallel job this is, read once from the launcher's
// environment: Open MPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK), else
// Slurm/PMI (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, PMI_RANK /
// PMI_SIZE), else a single process (rank 0 of 1). Reading the environment
// costs nothing, so a plain `kiln train` pays no MPI start-up.
#pragma once

#include <string>

namespace kiln {

struct ProcessInfo {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  std::string launcher = "none";  ///< "openmpi", "slurm", "pmi" or "none"
  bool is_root() const { return rank == 0; }
};

/// The process's place in the job (parsed on first call; malformed variables
/// are an InputError naming the variable).
const ProcessInfo& process_info();

}  // namespace kiln
