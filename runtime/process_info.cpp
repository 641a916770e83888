#include "runtime/process_info.h"

#include <algorithm>
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
    const char *rank, *size, *local, *local_size, *name;
  };
  const Scheme schemes[] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
       "openmpi"},
      {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "slurm"},
      {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "pmi"},
  };
  for (const Scheme& s : schemes) {
    int rank = 0, size = 1;
    if (!read_int(s.rank, &rank) || !read_int(s.size, &size)) continue;
    KILN_INPUT_CHECK(size >= 1 && rank < size, s.rank << "=" << rank << " is not below " << s.size << "=" << size);
    p.rank = rank;
    p.world = size;
    if (!read_int(s.local, &p.local_rank)) p.local_rank = rank;
    // SLURM_NTASKS_PER_NODE may read "4(x2)" on uneven allocations: then we
    // do not know and take the least consistent value (it only divides CPU
    // threads among the node's ranks).
    const char* ls = std::getenv(s.local_size);
    if (ls && *ls && std::string(ls).find_first_not_of("0123456789") == std::string::npos)
      read_int(s.local_size, &p.local_world);
    if (p.local_world < 1 || p.local_rank >= p.local_world) p.local_world = std::max(1, p.local_rank + 1);
    p.launcher = s.name;
    return p;
  }
  return p;
}

const ProcessInfo*& current_override() {
  static const ProcessInfo* p = nullptr;
  return p;
}

}  // namespace

const ProcessInfo& process_info() {
  if (const ProcessInfo* o = current_override()) return *o;
  static const ProcessInfo p = detect();
  return p;
}

ProcessInfoOverride::ProcessInfoOverride(const ProcessInfo& p) : value_(p), previous_(current_override()) {
  current_override() = &value_;
}

ProcessInfoOverride::~ProcessInfoOverride() { current_override() = previous_; }

}  // namespace kiln
