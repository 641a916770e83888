#include "runtime/process_info.h"

#include <cstdlib>
#include <string>

#include "runtime/error.h"

namespace kiln {

namespace {

bool read_int(const char* var, int* out) {
  const char* v = std::getenv(var);
  if (!v) return false;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  KILN_INPUT_CHECK(end != v && *end == '\0' && x >= 0 && x < (1 << 24),
                   "environment variable " << var << "='" << v << "' is not a valid non-negative integer");
  *out = static_cast<int>(x);
  return true;
}

ProcessInfo detect() {
  ProcessInfo p;
  struct Scheme {
    const char *rank, *size, *local, *name;
  };
  const Scheme schemes[] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "openmpi"},
      {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm"},
      {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "pmi"},
  };
  for (const Scheme& s : schemes) {
    int rank = 0, size = 1;
    if (!read_int(s.rank, &rank) || !read_int(s.size, &size)) continue;
    KILN_INPUT_CHECK(size >= 1 && rank < size, s.rank << "=" << rank << " is not below " << s.size << "=" << size);
    p.rank = rank;
    p.world = size;
    if (!read_int(s.local, &p.local_rank)) p.local_rank = rank;
    p.launcher = s.name;
    return p;
  }
  return p;
}

}  // namespace

const ProcessInfo& process_info() {
  static const ProcessInfo p = detect();
  return p;
}

}  // namespace kiln
