// Sums of a batch's loss and accuracy kept on the device, so the trainer
// reads them once per log window instead of pulling per-row losses and
// logits to the host after every micro-batch.
//
//   loss_sum_add:       *acc += Σ losses[r] over rows whose target is not ignore_index
//   correct_count_add:  *acc += #{r : target[r] valid and argmax_{c<V} logits[r, c] == target[r]}
//                       (the first maximum wins a tie, as a host loop `if (x > best)` would)
//
// `acc` is one double in device memory (host memory for the CPU references);
// each call adds one batch: the batch's sum is formed first and then added,
// so a sequence of calls associates as "running total + batch sum".
// Deterministic: the CPU references sum in row order in double; the CUDA
// kernels run one block with fixed strided partials and a fixed tree.
//
// Napkin math: a classifier batch of 128 rows x 10 classes is 5 KB of logits,
// a GPT micro-batch of 8 x 1024 rows is 32 KB of losses: one block reads it
// in a few microseconds; the point is not speed but that nothing waits.
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/cross_entropy.h"

namespace kiln {

// --- CPU references (T = float, double) --------------------------------------

/// *acc += Σ_{r : targets[r] != ignore_index} losses[r] (rows values).
template <typename T>
void loss_sum_add_cpu(double* acc, const T* losses, const int32_t* targets, int64_t rows,
                      int32_t ignore_index = kIgnoreIndex);

/// *acc += correct predictions of logits (rows, Vp), first V columns real.
template <typename T>
void correct_count_add_cpu(double* acc, const T* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                           int32_t ignore_index = kIgnoreIndex);

// --- CUDA launchers (device pointers, stream-ordered, no host wait) -----------

void loss_sum_add(double* acc, const float* losses, const int32_t* targets, int64_t rows, cudaStream_t stream,
                  int32_t ignore_index = kIgnoreIndex);
void correct_count_add(double* acc, const float* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                       cudaStream_t stream, int32_t ignore_index = kIgnoreIndex);
void correct_count_add(double* acc, const bf16* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                       cudaStream_t stream, int32_t ignore_index = kIgnoreIndex);

}  // namespace kiln
