// CUDA embeddings (kernels/embedding.h).
//
// Forward, napkin math (B·T = 8192, C = 768): read 8192 rows of wte and wpe +
// write the output = 3 · 8192 · 768 · 4 B = 75 MB in fp32 (38 MB in bf16)
// → ~16 µs at 4.8 TB/s. Gathered wte rows are contiguous (C values), so the
// 16-byte packs stay coalesced.
//
// Backward, deterministic without float atomics:
//   1. keys[i] = tokens[i] (out-of-range ids → V, which sorts last), pos[i] = i
//   2. stable radix sort of (key, pos) pairs (CUB): positions of one token
//      end up contiguous and in increasing order
//   3. one block per sorted index; only the first index of each run of equal
//      keys works: it sums the run's dout rows in order, column-parallel,
//      into a fresh fp32 accumulator and adds that to dwte's row
//   4. dwpe[t, c] += Σ_b dout[b, t, c], one thread per (t, c), b in order
// Bytes: dout read twice (once for dwte, once for dwpe) + the touched dwte
// rows read and written + dwpe: for 8192×768 fp32 ≈ 2·25 MB + ≤ 2·25 MB,
// plus the sort (~8192 · 8 B per pass, negligible).
// A run of one token over thousands of positions (padding) is summed by a
// single block; correct, but that block serializes over the run.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/elementwise.cuh"
#include "kernels/embedding.h"

namespace kiln {

namespace {

constexpr int kRowBlock = 256;

__global__ void set_status_kernel(int32_t* status) { *status = kEmbeddingStatusOk; }

// out (rows, C) = wte[ids[row]] (+ wpe[row % seq] when wpe is given), walked in
// 16-byte slots of the flat output. `vec` requires C to be a multiple of the
// pack size (a slot never crosses a row) and every pointer 16-byte aligned.
template <typename T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ ids,
                                         const T* __restrict__ wte, const T* __restrict__ wpe, int64_t rows,
                                         int64_t seq, int64_t channels, int64_t vocab, int32_t* status, bool vec) {
  constexpr int N = pack16_size<T>();
  const int64_t total = rows * channels;
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (base >= total) return;
  if (vec && base + N <= total) {
    const int64_t row = base / channels, c0 = base % channels;
    const int32_t id = ids[row];
    Pack<T, N> po;
    if (id < 0 || id >= vocab) {
      if (c0 == 0 && status) atomicMin(status, static_cast<int32_t>(row));
#pragma unroll
      for (int k = 0; k < N; ++k) po.v[k] = from_float<T>(0.0f);
    } else {
      Pack<T, N> pe = load_pack<T, N>(wte + static_cast<int64_t>(id) * channels + c0);
      if (wpe) {
        Pack<T, N> pp = load_pack<T, N>(wpe + (row % seq) * channels + c0);
#pragma unroll
        for (int k = 0; k < N; ++k) po.v[k] = from_float<T>(to_float(pe.v[k]) + to_float(pp.v[k]));
      } else {
        po = pe;
      }
    }
    store_pack<T, N>(out + base, po);
  } else {
    const int64_t end = base + N < total ? base + N : total;
    for (int64_t i = base; i < end; ++i) {
      const int64_t row = i / channels, c = i % channels;
      const int32_t id = ids[row];
      if (id < 0 || id >= vocab) {
        if (c == 0 && status) atomicMin(status, static_cast<int32_t>(row));
        out[i] = from_float<T>(0.0f);
      } else {
        const float e = to_float(wte[static_cast<int64_t>(id) * channels + c]);
        out[i] = wpe ? from_float<T>(e + to_float(wpe[(row % seq) * channels + c])) : wte[id * channels + c];
      }
    }
  }
}

template <typename T>
void launch_embedding_forward(T* out, const int32_t* ids, const T* wte, const T* wpe, int64_t rows, int64_t seq,
                              int64_t channels, int64_t vocab, int32_t* status, cudaStream_t stream,
                              const char* who) {
  KILN_CHECK(rows >= 0 && seq >= 0 && channels >= 0 && vocab >= 0,
             who << ": bad shape (rows " << rows << ", seq " << seq << ", channels " << channels << ", vocab "
                 << vocab << ")");
  KILN_CHECK(rows < 0x7fffffffLL, who << ": " << rows << " positions exceed the int32 status word");
  using D = device_t<T>;
  constexpr int N = pack16_size<D>();
  const bool vec = channels % N == 0 && is_aligned(out, 16) && is_aligned(wte, 16) && (!wpe || is_aligned(wpe, 16));
  launch_1d(embedding_forward_kernel<D>, ceil_div(rows * channels, N), kElementwiseBlock, 0, stream, dev_ptr(out),
            ids, dev_ptr(wte), dev_ptr(wpe), rows, seq, channels, vocab, status, vec);
}

// Step 1: sort keys. Out-of-range ids get key `vocab` (sorts after every real
// row and is skipped by step 3) and are reported through `status`.
__global__ void embedding_sort_keys_kernel(uint32_t* __restrict__ keys, int32_t* __restrict__ pos,
                                           const int32_t* __restrict__ ids, int64_t n, int64_t vocab,
                                           int32_t* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = ids[i];
  const bool ok = id >= 0 && id < vocab;
  if (!ok && status) atomicMin(status, static_cast<int32_t>(i));
  keys[i] = ok ? static_cast<uint32_t>(id) : static_cast<uint32_t>(vocab);
  pos[i] = static_cast<int32_t>(i);
}

// Step 3: block i handles sorted index i if it starts a run of equal keys.
// The run's end is found by binary search (keys are sorted), then each thread
// owns columns c, c + blockDim, ... and sums the run's rows in order.
template <typename T>
__global__ void embedding_rows_backward_kernel(float* __restrict__ dtable, const T* __restrict__ dout,
                                               const uint32_t* __restrict__ keys, const int32_t* __restrict__ pos,
                                               int64_t n, int64_t channels, int64_t vocab) {
  const int64_t i = blockIdx.x;
  const uint32_t key = keys[i];
  if (key >= vocab) return;                  // out-of-range ids: skipped
  if (i > 0 && keys[i - 1] == key) return;  // not the first position of its run
  __shared__ int64_t run_end;
  if (threadIdx.x == 0) {
    int64_t lo = i + 1, hi = n;  // first index in [i + 1, n) whose key differs
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (keys[mid] == key) lo = mid + 1; else hi = mid;
    }
    run_end = lo;
  }
  __syncthreads();
  const int64_t end = run_end;
  float* row = dtable + static_cast<int64_t>(key) * channels;  // (C)
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = i; j < end; ++j) acc += to_float(dout[static_cast<int64_t>(pos[j]) * channels + c]);
    row[c] += acc;
  }
}

// Step 4: dwpe (seq, C) += Σ_b dout (batch, seq, C)[b], b in order.
template <typename T>
__global__ void embedding_pos_backward_kernel(float* __restrict__ dwpe, const T* __restrict__ dout, int64_t batch,
                                              int64_t plane) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // index into (seq, C)
  if (i >= plane) return;
  float acc = 0.0f;
  for (int64_t b = 0; b < batch; ++b) acc += to_float(dout[b * plane + i]);
  dwpe[i] += acc;
}

// Workspace layout: keys in/out (uint32), positions in/out (int32), CUB
// scratch; each piece 256-byte aligned.
struct SortLayout {
  size_t keys_in = 0, keys_out = 0, pos_in = 0, pos_out = 0, temp = 0, temp_bytes = 0, total = 0;
};

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Bits that hold every key including the out-of-range sentinel `vocab`.
int sort_bits(int64_t vocab) {
  int bits = 1;
  while ((int64_t{1} << bits) <= vocab) ++bits;
  return bits;
}

SortLayout sort_layout(int64_t n, int64_t vocab) {
  SortLayout l;
  const size_t piece = align256(static_cast<size_t>(n) * 4);
  l.keys_in = 0;
  l.keys_out = piece;
  l.pos_in = 2 * piece;
  l.pos_out = 3 * piece;
  l.temp = 4 * piece;
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, l.temp_bytes, static_cast<const uint32_t*>(nullptr),
                                                  static_cast<uint32_t*>(nullptr),
                                                  static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
                                                  sort_bits(vocab)));
  l.total = l.temp + align256(l.temp_bytes);
  return l;
}

void check_backward_shape(int64_t n, int64_t channels, int64_t vocab, const char* who) {
  KILN_CHECK(n >= 0 && channels >= 0, who << ": bad shape (n " << n << ", channels " << channels << ")");
  KILN_CHECK(vocab >= 1 && vocab < 0x7fffffffLL, who << ": vocabulary size " << vocab << " out of range");
  KILN_CHECK(n < 0x7fffffffLL, who << ": " << n << " positions exceed the int32 sort");
}

template <typename T>
void launch_rows_backward(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels,
                          int64_t vocab, void* workspace, size_t workspace_bytes, int32_t* status,
                          cudaStream_t stream, const char* who) {
  check_backward_shape(n, channels, vocab, who);
  if (n == 0) return;
  const SortLayout l = sort_layout(n, vocab);
  KILN_CHECK(workspace != nullptr && workspace_bytes >= l.total,
             who << ": workspace of " << workspace_bytes << " bytes, need " << l.total
                 << " (embedding_backward_workspace_bytes)");
  KILN_CHECK(is_aligned(workspace, 256), who << ": workspace must be 256-byte aligned");
  char* ws = static_cast<char*>(workspace);
  auto* keys_in = reinterpret_cast<uint32_t*>(ws + l.keys_in);
  auto* keys_out = reinterpret_cast<uint32_t*>(ws + l.keys_out);
  auto* pos_in = reinterpret_cast<int32_t*>(ws + l.pos_in);
  auto* pos_out = reinterpret_cast<int32_t*>(ws + l.pos_out);
  launch_1d(embedding_sort_keys_kernel, n, kRowBlock, 0, stream, keys_in, pos_in, ids, n, vocab, status);
  size_t temp_bytes = l.temp_bytes;
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(ws + l.temp, temp_bytes, keys_in, keys_out, pos_in, pos_out,
                                                  static_cast<int>(n), 0, sort_bits(vocab), stream));
  if (channels == 0) return;
  launch(embedding_rows_backward_kernel<device_t<T>>, dim3(static_cast<unsigned>(n)), dim3(kRowBlock), 0, stream,
         dtable, dev_ptr(dout), keys_out, pos_out, n, channels, vocab);
}

template <typename T>
void launch_embedding_backward(float* dwte, float* dwpe, const T* dout, const int32_t* tokens, int64_t batch,
                               int64_t seq, int64_t channels, int64_t vocab, void* workspace,
                               size_t workspace_bytes, int32_t* status, cudaStream_t stream) {
  KILN_CHECK(batch >= 0 && seq >= 0, "embedding_backward: bad shape (" << batch << ", " << seq << ")");
  launch_rows_backward(dwte, dout, tokens, batch * seq, channels, vocab, workspace, workspace_bytes, status, stream,
                       "embedding_backward");
  if (dwpe == nullptr || batch == 0) return;
  launch_1d(embedding_pos_backward_kernel<device_t<T>>, seq * channels, kRowBlock, 0, stream, dwpe, dev_ptr(dout),
            batch, seq * channels);
}

}  // namespace

void embedding_status_reset(int32_t* status, cudaStream_t stream) {
  launch_1d(set_status_kernel, 1, 1, 0, stream, status);
}

void embedding_check_status(const int32_t* status, const int32_t* ids, int64_t vocab, cudaStream_t stream,
                            const char* what) {
  int32_t h = kEmbeddingStatusOk;
  KILN_CUDA_CHECK(cudaMemcpyAsync(&h, status, sizeof(h), cudaMemcpyDeviceToHost, stream));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (h == kEmbeddingStatusOk) return;
  int32_t id = 0;
  KILN_CUDA_CHECK(cudaMemcpy(&id, ids + h, sizeof(id), cudaMemcpyDeviceToHost));
  KILN_INPUT_CHECK(false, what << ": token id " << id << " at position " << h << " is outside the vocabulary [0, "
                               << vocab << ")");
}

void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int64_t batch,
                       int64_t seq, int64_t channels, int64_t vocab, int32_t* status, cudaStream_t stream) {
  KILN_CHECK(wpe != nullptr, "embedding_forward: wpe is null (use embedding_lookup_forward)");
  launch_embedding_forward(out, tokens, wte, wpe, batch * seq, seq, channels, vocab, status, stream,
                           "embedding_forward");
}
void embedding_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int64_t batch,
                       int64_t seq, int64_t channels, int64_t vocab, int32_t* status, cudaStream_t stream) {
  KILN_CHECK(wpe != nullptr, "embedding_forward: wpe is null (use embedding_lookup_forward)");
  launch_embedding_forward(out, tokens, wte, wpe, batch * seq, seq, channels, vocab, status, stream,
                           "embedding_forward");
}
void embedding_lookup_forward(float* out, const int32_t* ids, const float* table, int64_t n, int64_t channels,
                              int64_t vocab, int32_t* status, cudaStream_t stream) {
  launch_embedding_forward(out, ids, table, static_cast<const float*>(nullptr), n, 1, channels, vocab, status,
                           stream, "embedding_lookup_forward");
}
void embedding_lookup_forward(bf16* out, const int32_t* ids, const bf16* table, int64_t n, int64_t channels,
                              int64_t vocab, int32_t* status, cudaStream_t stream) {
  launch_embedding_forward(out, ids, table, static_cast<const bf16*>(nullptr), n, 1, channels, vocab, status,
                           stream, "embedding_lookup_forward");
}

size_t embedding_backward_workspace_bytes(int64_t n, int64_t vocab) {
  check_backward_shape(n, 0, vocab, "embedding_backward_workspace_bytes");
  if (n == 0) return 0;
  return sort_layout(n, vocab).total;
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int64_t batch,
                        int64_t seq, int64_t channels, int64_t vocab, void* workspace, size_t workspace_bytes,
                        int32_t* status, cudaStream_t stream) {
  launch_embedding_backward(dwte, dwpe, dout, tokens, batch, seq, channels, vocab, workspace, workspace_bytes,
                            status, stream);
}
void embedding_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int64_t batch,
                        int64_t seq, int64_t channels, int64_t vocab, void* workspace, size_t workspace_bytes,
                        int32_t* status, cudaStream_t stream) {
  launch_embedding_backward(dwte, dwpe, dout, tokens, batch, seq, channels, vocab, workspace, workspace_bytes,
                            status, stream);
}
void embedding_lookup_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t channels,
                               int64_t vocab, void* workspace, size_t workspace_bytes, int32_t* status,
                               cudaStream_t stream) {
  launch_rows_backward(dtable, dout, ids, n, channels, vocab, workspace, workspace_bytes, status, stream,
                       "embedding_lookup_backward");
}
void embedding_lookup_backward(float* dtable, const bf16* dout, const int32_t* ids, int64_t n, int64_t channels,
                               int64_t vocab, void* workspace, size_t workspace_bytes, int32_t* status,
                               cudaStream_t stream) {
  launch_rows_backward(dtable, dout, ids, n, channels, vocab, workspace, workspace_bytes, status, stream,
                       "embedding_lookup_backward");
}

}  // namespace kiln
