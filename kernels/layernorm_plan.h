// How layernorm_backward launches for rows of C elements: block shape,
// dynamic shared memory and whether it must opt in to more than 48 KB. Pure
// host arithmetic (no CUDA types), so the launcher (kernels/layernorm.cu) and
// the launch-limits test (tests/kernels/launch_limits_test.cpp) run the same
// code: the test feeds it the kernels' real static shared memory and thread
// limits, read from the built objects (or, on a GPU, cudaFuncGetAttributes),
// and checks the result against the hardware limits for every C.
//
// The limit that matters: a block may use static + dynamic shared memory up
// to 48 KB without asking; beyond that the launcher must raise the kernel's
// cudaFuncAttributeMaxDynamicSharedMemorySize, and static + dynamic may reach
// cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KB on sm_90). Comparing the
// dynamic size alone against 48 KB (as this launcher once did) fails to launch
// whenever the kernel also has static shared memory: the block reductions'
// 128 bytes, for C = 6129..6144 in fp32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

/// Shared memory (static + dynamic) a block may use without opting in.
inline constexpr size_t kSmemNoOptIn = 48 * 1024;
/// layernorm kernels' __launch_bounds__: block-per-row kernels (forward and
/// backward) and the warp-per-row backward (8 warps).
inline constexpr int kLayerNormMaxBlock = 512;
inline constexpr int kLayerNormWarpBackwardBlock = 256;

/// What launching depends on, per kernel: cudaFuncAttributes::sharedSizeBytes
/// and ::maxThreadsPerBlock (the launch bound, or less when the kernel's
/// registers do not fit that many threads, as in a -G build).
struct KernelLimits {
  size_t static_smem = 0;
  int max_threads = 1024;
};

struct LayerNormBackwardPlan {
  bool warp = true;         ///< one warp per row (else one block per row)
  int block = 0;            ///< threads per block (a multiple of 32)
  size_t dynamic_smem = 0;  ///< bytes of dynamic shared memory per block
  bool smem_acc = false;    ///< dweight/dbias accumulate in shared memory (else in global partial slots)
  bool opt_in = false;      ///< static + dynamic > 48 KB: raise MaxDynamicSharedMemorySize first
  size_t static_smem = 0;   ///< the chosen kernel's static shared memory (for the checks)
};

/// The launch of layernorm_backward for rows of C elements of `elem_bytes`
/// (4: fp32, 2: bf16), given the warp- and block-per-row kernels' limits and
/// the device's opt-in maximum (cudaDevAttrMaxSharedMemoryPerBlockOptin).
/// Always within the limits: static + dynamic <= 48 KB unless opt_in, and
/// <= smem_optin always; block <= the chosen kernel's max_threads.
inline LayerNormBackwardPlan plan_layernorm_backward(int64_t C, int elem_bytes, KernelLimits warp_kernel,
                                                     KernelLimits block_kernel, size_t smem_optin) {
  const int64_t N = 16 / elem_bytes;                  // elements per 16-byte chunk
  const int64_t K = 32 / N;                           // chunks a thread keeps in registers
  const int64_t nch = (C + N - 1) / N;                // chunks per row
  const size_t row_acc = 2 * static_cast<size_t>(nch) * static_cast<size_t>(N) * sizeof(float);  // (2, N, nch)
  LayerNormBackwardPlan p;
  if (nch <= 32 * K) {
    // Warp per row; as many warps (up to 8, and as many as the kernel's
    // thread limit allows) as fit 48 KB beside the static shared memory.
    p.warp = true;
    p.static_smem = warp_kernel.static_smem;
    int64_t max_warps = kLayerNormWarpBackwardBlock / 32;
    if (warp_kernel.max_threads / 32 < max_warps) max_warps = warp_kernel.max_threads / 32;
    if (max_warps < 1) max_warps = 1;
    const size_t room = kSmemNoOptIn > p.static_smem ? kSmemNoOptIn - p.static_smem : 0;
    int64_t warps = static_cast<int64_t>(room / row_acc);
    if (warps < 1) {  // not even one row's accumulators fit 48 KB: opt in (C <= 1024 never does)
      const size_t big = smem_optin > p.static_smem ? smem_optin - p.static_smem : 0;
      warps = static_cast<int64_t>(big / row_acc);
      if (warps < 1) warps = 1;  // cannot happen for nch <= 32 K; a launch error rather than silence
    }
    if (warps > max_warps) warps = max_warps;
    p.block = static_cast<int>(32 * warps);
    p.dynamic_smem = static_cast<size_t>(warps) * row_acc;
    p.smem_acc = true;
  } else {
    // Block per row, each thread caching up to K chunks; longer rows stream
    // in tiles, so fewer threads (a -G build's register-bound limit) only
    // costs time.
    p.warp = false;
    p.static_smem = block_kernel.static_smem;
    int64_t threads = ((nch + K - 1) / K + 31) / 32 * 32;
    int64_t cap = kLayerNormMaxBlock < block_kernel.max_threads ? kLayerNormMaxBlock : block_kernel.max_threads;
    cap = cap / 32 * 32;
    if (cap < 32) cap = 32;
    if (threads > cap) threads = cap;
    p.block = static_cast<int>(threads);
    p.smem_acc = p.static_smem + row_acc <= smem_optin;
    p.dynamic_smem = p.smem_acc ? row_acc : 0;
  }
  p.opt_in = p.static_smem + p.dynamic_smem > kSmemNoOptIn;
  return p;
}

}  // namespace kiln
