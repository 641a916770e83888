// Host emulation of the CUDA subset the attention kernels use, so their real
// source (kernels/attention.cu, kernels/attention_backward.cu) runs and is
// tested on machines without a GPU. Test-only; included before those files in
// a CPU-only build (see attention_emulation_test.cpp).
//
// Model: blocks run one after another; the threads of a block are fibers
// (ucontext) on the calling thread, switched only at collective points:
//   __syncthreads()            a barrier of the whole block;
//   __shfl_xor_sync, ldmatrix, mma.sync
//                              a barrier of the 32 lanes of a warp: each lane
//                              posts its operands, all read, all leave.
// The warp-level instructions are written from the PTX ISA's definitions,
// independently of how the kernels use them:
//   ldmatrix.x4[.trans]: lanes 8m..8m+7 give the 8 row addresses of matrix m;
//     lane l receives in register m the pair (row l/4, cols 2(l%4), +1), or
//     with .trans the pair (rows 2(l%4), +1; col l/4).
//   mma.m16n8k16 (bf16, fp32 accumulate), g = l/4, t = l%4:
//     A (16×16) reg r of lane l holds row g + 8·(r&1), cols 2t + 8·(r>>1) + {0,1};
//     B (16×8)  reg r holds rows 2t + 8r + {0,1}, col g;
//     C (16×8)  c0, c1 row g, cols 2t, 2t+1; c2, c3 row g+8.
// It checks what a GPU would punish: ldmatrix addresses outside shared memory
// or not 16-byte aligned, a barrier some threads never reach (deadlock), more
// dynamic shared memory or threads than an H100/H200 block may have, and reads
// of shared memory nothing wrote (it starts as NaN bf16s each block).
// It also counts the warp-wide mma.sync instructions of every launch
// (counters()), so tests can check that masked tiles are skipped, not
// computed and thrown away.
// Not modelled: registers, timing, races within a warp (lanes run one at a
// time between collectives, so a missing __syncthreads can still pass here;
// the barriers the kernels do have are all checked for being reached).
#pragma once

#define KILN_ATTENTION_EMULATION 1

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/common.h"
#include "runtime/error.h"

// ---- CUDA keywords and types --------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }

struct __nv_bfloat16 {
  uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;  // x in the low half, as on the GPU
};
inline float __bfloat162float(__nv_bfloat16 b) { return kiln::bf16_to_float(kiln::bf16{b.bits}); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {kiln::float_to_bf16(f).bits}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline int min(int a, int b) { return a < b ? a : b; }

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename Kernel>
int cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return 0;
}

// ---- the emulator -------------------------------------------------------------
namespace kiln_emu {

constexpr size_t kMaxSharedBytes = 227 * 1024;  // sm_90 opt-in limit per block
constexpr size_t kFiberStack = 256 * 1024;

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "cuda_host_emulation: %s\n", what);
  std::abort();  // never throw across fibers
}

}  // namespace kiln_emu

// The block's dynamic shared memory (one block runs at a time). The kernels
// declare `extern __shared__ unsigned char smem_raw[]` at block scope inside
// kiln::attn's unnamed namespace, which names this array.
namespace kiln {
namespace attn {
namespace {
alignas(16) unsigned char smem_raw[::kiln_emu::kMaxSharedBytes];
}  // namespace
}  // namespace attn
}  // namespace kiln

namespace kiln_emu {

inline unsigned char* shared_memory() { return ::kiln::attn::smem_raw; }

struct Barrier {
  int count = 0;    // participants
  int arrived = 0;
  uint64_t generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  dim3 tid;
  int linear = 0;
  bool done = false;
};

// One warp's mailboxes. Every lane runs the same sequence of collectives, so
// a per-lane counter gives all lanes the same parity for the same collective;
// two parities let a collective need a single barrier: the slots of parity p
// are next written two collectives later, after every lane has passed the
// barrier in between, i.e. after every lane has read its result.
struct WarpSlots {
  Barrier bar;
  unsigned seq[32] = {};
  const void* ptr[2][32];
  uint32_t reg[2][32][6];  // mma operands a0..a3, b0, b1
  float acc[2][32][4];     // mma accumulators in
  uint32_t out_u[2][32][4];
  float out_f[2][32][4];
  float val[2][32];
};

struct Block {
  dim3 grid_dim, block_dim, block_idx;
  std::vector<Fiber> fibers;
  std::vector<WarpSlots> warps;
  Barrier bar;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  uint64_t progress = 0;  // arrivals, releases and finished fibers
};

/// Work counters: one entry per launch_grid() call, in launch order.
struct Counters {
  std::vector<uint64_t> mma_per_launch;  // warp-wide m16n8k16 products
};
inline Counters& counters() {
  static Counters c;
  return c;
}

inline Block*& active() {
  static Block* b = nullptr;
  return b;
}
inline Fiber& fiber() { return *active()->current; }
inline int lane_id() { return fiber().linear % 32; }
inline WarpSlots& warp() { return active()->warps[fiber().linear / 32]; }

inline void yield() { swapcontext(&fiber().ctx, &active()->scheduler); }

/// Arrives at `b` and returns once every participant has arrived. Returns true
/// in the last arriving thread only, which runs on before anyone else resumes
/// (fibers switch only when they block), so it can act for the whole group at
/// the instant of the barrier, as warp instructions do.
inline bool wait(Barrier& b) {
  ++active()->progress;
  const uint64_t gen = b.generation;
  if (++b.arrived == b.count) {
    b.arrived = 0;
    ++b.generation;
    return true;
  }
  while (b.generation == gen) yield();
  return false;
}

/// Stack i of a pool kept for the whole run (allocating 128 stacks per
/// block would cost more than the emulation itself).
inline char* fiber_stack(int i) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (static_cast<int>(pool.size()) <= i) pool.emplace_back(new char[kFiberStack]);
  return pool[i].get();
}

inline void trampoline() {
  Block* b = active();
  (*b->body)();
  b->current->done = true;
  ++b->progress;
  // returning resumes uc_link (the scheduler)
}

inline void run_block(dim3 grid, dim3 bdim, dim3 bidx, const std::function<void()>& body) {
  const int n = static_cast<int>(bdim.x * bdim.y * bdim.z);
  if (n > 1024) die("more than 1024 threads per block");
  if (n % 32 != 0) die("block size is not a multiple of 32 (partial warps are not emulated)");
  Block b;
  b.grid_dim = grid;
  b.block_dim = bdim;
  b.block_idx = bidx;
  b.body = &body;
  b.bar.count = n;
  b.fibers.resize(n);
  b.warps.resize(n / 32);
  for (WarpSlots& w : b.warps) w.bar.count = 32;
  // Fresh shared memory is garbage on a GPU: NaN bf16 pairs here.
  std::memset(shared_memory(), 0xFF, kMaxSharedBytes);
  active() = &b;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.tid = dim3(i % bdim.x, (i / bdim.x) % bdim.y, i / (bdim.x * bdim.y));
    f.stack = fiber_stack(i);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kFiberStack;
    f.ctx.uc_link = &b.scheduler;
    makecontext(&f.ctx, trampoline, 0);
  }
  int remaining = n;
  while (remaining > 0) {
    const uint64_t before = b.progress;
    for (Fiber& f : b.fibers) {
      if (f.done) continue;
      b.current = &f;
      swapcontext(&b.scheduler, &f.ctx);
      if (f.done) --remaining;
    }
    if (remaining > 0 && b.progress == before) die("deadlock: some threads wait at a barrier others never reach");
  }
  active() = nullptr;
}

template <typename Kernel, typename... Args>
void launch_grid(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > kMaxSharedBytes) die("dynamic shared memory above the sm_90 per-block limit");
  counters().mma_per_launch.push_back(0);
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(grid, block, dim3(x, y, z), body);
}

inline void syncthreads() { wait(active()->bar); }

inline int next_parity(WarpSlots& w, int lane) { return static_cast<int>(w.seq[lane]++ & 1u); }

inline float shfl_xor(float x, int offset) {
  WarpSlots& w = warp();
  const int l = lane_id(), p = next_parity(w, l);
  w.val[p][l] = x;
  wait(w.bar);
  return w.val[p][l ^ offset];
}

inline uint16_t bits_at(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const unsigned char*>(row) + 2 * col, 2);
  return v;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* addr, bool trans) {
  const auto* base = shared_memory();
  const auto* q = static_cast<const unsigned char*>(addr);
  if (q < base || q + 16 > base + kMaxSharedBytes) die("ldmatrix address outside shared memory");
  if ((q - base) % 16 != 0) die("ldmatrix row address not 16-byte aligned");
  WarpSlots& w = warp();
  const int l = lane_id(), p = next_parity(w, l);
  w.ptr[p][l] = addr;
  if (wait(w.bar)) {  // last lane: the whole warp's load, at one instant
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int m = 0; m < 4; ++m) {
        uint16_t lo, hi;
        if (!trans) {  // (row g, cols 2t, 2t+1) of matrix m
          lo = bits_at(w.ptr[p][8 * m + g], 2 * t);
          hi = bits_at(w.ptr[p][8 * m + g], 2 * t + 1);
        } else {  // (rows 2t, 2t+1; col g) of matrix m
          lo = bits_at(w.ptr[p][8 * m + 2 * t], g);
          hi = bits_at(w.ptr[p][8 * m + 2 * t + 1], g);
        }
        w.out_u[p][lane][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
      }
    }
  }
  for (int m = 0; m < 4; ++m) r[m] = w.out_u[p][l][m];
}

inline float bf16_half(uint32_t reg, int high) {
  return kiln::bf16_to_float(kiln::bf16{static_cast<uint16_t>(high ? reg >> 16 : reg & 0xFFFFu)});
}

inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpSlots& w = warp();
  const int l = lane_id(), p = next_parity(w, l);
  for (int i = 0; i < 4; ++i) {
    w.reg[p][l][i] = a[i];
    w.acc[p][l][i] = c[i];
  }
  w.reg[p][l][4] = b0;
  w.reg[p][l][5] = b1;
  if (wait(w.bar)) {  // last lane: the whole warp's product
    if (!counters().mma_per_launch.empty()) ++counters().mma_per_launch.back();
    auto A = [&](int row, int k) {  // owner lane (row % 8, (k % 8) / 2), reg (row >= 8) + 2 (k >= 8)
      const int owner = (row % 8) * 4 + (k % 8) / 2;
      return bf16_half(w.reg[p][owner][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
    };
    auto B = [&](int k, int col) {  // owner lane (col, (k % 8) / 2), reg k >= 8
      const int owner = col * 4 + (k % 8) / 2;
      return bf16_half(w.reg[p][owner][4 + (k >= 8 ? 1 : 0)], k % 2);
    };
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float sum = 0.0f;  // bf16 products are exact in fp32
        for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
        w.out_f[p][lane][e] = w.acc[p][lane][e] + sum;
      }
    }
  }
  for (int e = 0; e < 4; ++e) c[e] = w.out_f[p][l][e];
}

}  // namespace kiln_emu

#define threadIdx (::kiln_emu::fiber().tid)
#define blockIdx (::kiln_emu::active()->block_idx)
#define blockDim (::kiln_emu::active()->block_dim)
#define gridDim (::kiln_emu::active()->grid_dim)
inline void __syncthreads() { ::kiln_emu::syncthreads(); }
inline float __shfl_xor_sync(unsigned mask, float x, int offset) {
  if (mask != 0xffffffffu) ::kiln_emu::die("only full-warp shuffles are emulated");
  return ::kiln_emu::shfl_xor(x, offset);
}

// ---- what kernels/launch.cuh and the asm helpers provide on the GPU -------------
namespace kiln {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Kernel, typename... Args>
void launch_1d(Kernel kernel, int64_t n, int block, size_t smem, cudaStream_t, Args... args) {
  if (n <= 0) return;
  ::kiln_emu::launch_grid(kernel, dim3(static_cast<unsigned>(ceil_div(n, block))), dim3(block), smem, args...);
}
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, Args... args) {
  ::kiln_emu::launch_grid(kernel, grid, block, smem, args...);
}

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> struct device_type { using type = T; };
template <> struct device_type<bf16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename device_type<T>::type;
template <typename T> inline device_t<T>* dev_ptr(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <typename T> inline const device_t<T>* dev_ptr(const T* p) { return reinterpret_cast<const device_t<T>*>(p); }

inline bool is_aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

namespace attn {
inline void ldsm_x4(uint32_t (&r)[4], const __nv_bfloat16* p) { ::kiln_emu::ldmatrix_x4(r, p, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) { ::kiln_emu::ldmatrix_x4(r, p, true); }
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::kiln_emu::mma_m16n8k16(c, a, b0, b1);
}
}  // namespace attn
}  // namespace kiln
