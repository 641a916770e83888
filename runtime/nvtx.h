// NVTX ranges for Nsight Systems: `NvtxRange r("attention.forward");` marks
// the scope. Compiled to nothing in the CPU build.
#pragma once

#if KILN_WITH_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace kiln {

class NvtxRange {
 public:
#if KILN_WITH_CUDA
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
#else
  explicit NvtxRange(const char*) {}
#endif
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace kiln
