// Fill op family: constants, 0..n-1, and Philox uniform / normal draws.
//
// The random fills give element i the value philox_uniform / philox_normal
// (runtime/philox.h) of the stream (seed, offset) scaled to [lo, hi) or to
// (mean, stddev) with one fmaf, so the CPU reference and the CUDA kernel
// produce the same bits. bf16 outputs round that float to nearest even;
// double outputs (CPU only) widen it exactly.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

// --- CUDA launchers (kernels/fill.cu) ------------------------------------
/// y[i] = value for i < n.
void fill_constant(float* y, float value, int64_t n, cudaStream_t stream);
void fill_constant(bf16* y, bf16 value, int64_t n, cudaStream_t stream);
void fill_constant(int32_t* y, int32_t value, int64_t n, cudaStream_t stream);
void fill_constant(uint16_t* y, uint16_t value, int64_t n, cudaStream_t stream);
void fill_constant(uint8_t* y, uint8_t value, int64_t n, cudaStream_t stream);
/// y[i] = i (rounded to the element type).
void fill_arange(float* y, int64_t n, cudaStream_t stream);
void fill_arange(bf16* y, int64_t n, cudaStream_t stream);
void fill_arange(int32_t* y, int64_t n, cudaStream_t stream);
/// y[i] = fmaf(philox_uniform(seed, offset, i), hi - lo, lo).
void fill_uniform(float* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t stream);
void fill_uniform(bf16* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t stream);
/// y[i] = fmaf(philox_normal(seed, offset, i), stddev, mean).
void fill_normal(float* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev,
                 cudaStream_t stream);
void fill_normal(bf16* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev,
                 cudaStream_t stream);

// --- CPU references (kernels/fill_cpu.cpp) --------------------------------
// T = float, double, bf16 (and the integer types for constant / arange).
template <typename T> void fill_constant_cpu(T* y, T value, int64_t n);
template <typename T> void fill_arange_cpu(T* y, int64_t n);
template <typename T>
void fill_uniform_cpu(T* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi);
template <typename T>
void fill_normal_cpu(T* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev);

/// Counters a fill of n elements consumes (the next draw's offset is
/// offset + this).
inline uint64_t uniform_counters(int64_t n) { return static_cast<uint64_t>((n + 3) / 4); }
inline uint64_t normal_counters(int64_t n) { return static_cast<uint64_t>((n + 1) / 2); }

}  // namespace kiln
