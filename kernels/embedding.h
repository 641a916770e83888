// Embeddings: GPT-style token + learned position embedding, and a plain
// lookup (no positions) for other models.
//
//   forward   out (B, T, C) = wte (V, C)[tokens (B, T)] + wpe (T_max, C)[t]
//   backward  dwte (V, C) += Σ over positions with token v of dout[b, t, :]
//             dwpe (T, C) += Σ_b dout[b, t, :]
//
// Determinism: for each vocabulary row the contributing positions are summed
// in increasing position order into a fresh fp32 accumulator, which is then
// added to dwte; dwpe sums the batch in order the same way. The CPU reference
// and the GPU (a stable radix sort of (token, position) pairs, then one block
// per distinct token) use the same order, so in fp32 they agree bit for bit.
//
// Out-of-range ids (< 0 or >= V): the CPU references throw kiln::InputError
// naming the id and its position before writing anything. The GPU cannot
// throw: forward writes a zero row (no wpe either) for that position and
// backward skips it, and both record the smallest bad position in an optional
// device status word (atomicMin on an int: deterministic). The caller resets
// the word with embedding_status_reset before the launches and checks it with
// embedding_check_status (which synchronizes the stream) whenever it wants the
// error raised — e.g. once per step, or right away in tests.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Value of the status word when every id was in range.
constexpr int32_t kEmbeddingStatusOk = 0x7fffffff;

// --- CPU references (T = float, double) --------------------------------------

/// out (batch, seq, channels) = wte[tokens[b, t]] + wpe[t]. tokens: (batch, seq)
/// int32; wte (vocab, channels); wpe (>= seq, channels).
template <typename T>
void embedding_forward_cpu(T* out, const int32_t* tokens, const T* wte, const T* wpe, int64_t batch, int64_t seq,
                           int64_t channels, int64_t vocab);
/// dwte (vocab, channels) += token sums, dwpe (seq, channels) += batch sums of
/// dout (batch, seq, channels). dwpe may be nullptr (not trained).
template <typename T>
void embedding_backward_cpu(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int64_t batch, int64_t seq,
                            int64_t channels, int64_t vocab);

/// out (n, channels) = table (vocab, channels)[ids (n)].
template <typename T>
void embedding_lookup_forward_cpu(T* out, const int32_t* ids, const T* table, int64_t n, int64_t channels,
                                  int64_t vocab);
/// dtable (vocab, channels) += Σ over i with ids[i] = v of dout (n, channels)[i].
template <typename T>
void embedding_lookup_backward_cpu(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels,
                                   int64_t vocab);

// --- CUDA launchers ------------------------------------------------------------

/// Sets *status (device int32) to kEmbeddingStatusOk, stream-ordered.
void embedding_status_reset(int32_t* status, cudaStream_t stream);
/// Synchronizes `stream`, reads *status and, if an id was out of range, throws
/// kiln::InputError naming `what`, the id (read back from the device `ids`)
/// and its flat position.
void embedding_check_status(const int32_t* status, const int32_t* ids, int64_t vocab, cudaStream_t stream,
                            const char* what = "embedding");

/// out (batch, seq, channels) = wte[tokens] + wpe[t]; weights in the
/// activation type (fp32 or the bf16 copy). status may be nullptr.
void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int64_t batch,
                       int64_t seq, int64_t channels, int64_t vocab, int32_t* status, cudaStream_t stream);
void embedding_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int64_t batch,
                       int64_t seq, int64_t channels, int64_t vocab, int32_t* status, cudaStream_t stream);
/// out (n, channels) = table[ids].
void embedding_lookup_forward(float* out, const int32_t* ids, const float* table, int64_t n, int64_t channels,
                              int64_t vocab, int32_t* status, cudaStream_t stream);
void embedding_lookup_forward(bf16* out, const int32_t* ids, const bf16* table, int64_t n, int64_t channels,
                              int64_t vocab, int32_t* status, cudaStream_t stream);

/// Bytes of device workspace the backward launchers need for n = batch·seq
/// ids and the given vocabulary (sort buffers + the radix sort's scratch).
/// Queries the CUDA sort, so call it only in CUDA builds.
size_t embedding_backward_workspace_bytes(int64_t n, int64_t vocab);

/// dwte (vocab, channels) += ..., dwpe (seq, channels) += ... (fp32, dwpe may be
/// nullptr); dout (batch, seq, channels) fp32 or bf16. workspace: at least
/// embedding_backward_workspace_bytes(batch·seq, vocab) bytes, aligned to
/// 256 bytes (cudaMalloc's alignment). Does not synchronize.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int64_t batch,
                        int64_t seq, int64_t channels, int64_t vocab, void* workspace, size_t workspace_bytes,
                        int32_t* status, cudaStream_t stream);
void embedding_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int64_t batch,
                        int64_t seq, int64_t channels, int64_t vocab, void* workspace, size_t workspace_bytes,
                        int32_t* status, cudaStream_t stream);
/// dtable (vocab, channels) += ... for dout (n, channels).
void embedding_lookup_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t channels,
                               int64_t vocab, void* workspace, size_t workspace_bytes, int32_t* status,
                               cudaStream_t stream);
void embedding_lookup_backward(float* dtable, const bf16* dout, const int32_t* ids, int64_t n, int64_t channels,
                               int64_t vocab, void* workspace, size_t workspace_bytes, int32_t* status,
                               cudaStream_t stream);

}  // namespace kiln
