// Image batches assembled on the device: gather samples by index from the
// whole (uint8, NHWC) training set held in memory, apply a seeded random crop
// with zero padding and a random horizontal flip, and normalize — in one
// kernel (kernels/augment.cu), with a CPU reference of the same signature
// (kernels/augment_cpu.cpp) that the CPU backend trains with.
//
//   images (N, H, W, C) uint8   the whole split, uploaded once
//   keys   (B,) int64           the batch's samples: augment_key(epoch, index)
//                               = (epoch << 32) | index, the image index in the
//                               low 32 bits, the epoch in the high 32
//   out    (B, H, W, C)         lut[pixel] with crop and flip applied
//
// Crop: the image is padded by `pad` zero pixels on every side and an H x W
// window at offset (oy, ox) in [0, 2·pad]² is kept, so out(i, j) =
// image(i + oy − pad, j + ox − pad), zero (before normalization) outside.
// Flip: the kept window is mirrored left-right, out(i, j) = crop(i, W−1−j).
// The draws of a sample come from Philox keyed by (seed ^ kAugmentKey) at
// counter keys[b] itself: they depend on which sample and which epoch, never
// on the batch, the position in it, the process count or the backend, so a
// sample gets the same crop everywhere. pad = 0 and flip = false is a plain
// gather + normalize (evaluation).
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "runtime/philox.h"

namespace kiln {

struct AugmentParams {
  int64_t h = 0, w = 0, c = 1;  ///< image size (stored and produced)
  int64_t pad = 0;              ///< random crop with this much zero padding (0 = no crop)
  bool flip = false;            ///< random horizontal flip with probability 1/2
  uint64_t seed = 0;
};

/// A sample's key for epoch `epoch`: its Philox counter, and its image index
/// in the low 32 bits (indices below 2^32, epochs below 2^31).
constexpr int64_t augment_key(uint64_t epoch, int64_t index) {
  return static_cast<int64_t>((epoch << 32) | (static_cast<uint64_t>(index) & 0xffffffffu));
}
/// The image index of a key.
KILN_HD int64_t augment_index(int64_t key) { return key & 0xffffffff; }

/// Distinguishes the augmentation stream from the other Philox streams that
/// share the run's seed (weight init, dropout).
constexpr uint64_t kAugmentKey = 0x6175676d656e7431ull;  // "augment1"

struct AugmentDraw {
  int32_t oy = 0, ox = 0;  ///< crop offsets in [0, 2·pad]
  bool flip = false;
};

/// The crop and flip of the sample with key `key` (host and device).
KILN_HD AugmentDraw augment_draw(const AugmentParams& p, int64_t key) {
  const Philox4 r = philox4x32(p.seed ^ kAugmentKey, static_cast<uint64_t>(key));
  AugmentDraw d;
  const uint32_t span = static_cast<uint32_t>(2 * p.pad + 1);
  d.oy = static_cast<int32_t>(r.v[0] % span);
  d.ox = static_cast<int32_t>(r.v[1] % span);
  d.flip = p.flip && (r.v[2] & 1u);
  return d;
}

/// lut[v] for the 256 pixel values: (v/255 − mean)/std when normalize, v/255
/// otherwise — data/image_dataset.h's formula, so both paths feed the model
/// the same floats.
void augment_lut(float* lut, bool normalize, float mean, float std);

/// Throws Error naming the problem (negative sizes, pad beyond the image).
void check_augment(const AugmentParams& p, int64_t batch, const char* op);

/// CPU reference (T = float or double). Image indices are checked against n_images.
template <typename T>
void augment_batch_cpu(T* out, const uint8_t* images, int64_t n_images, const int64_t* keys, int64_t batch,
                       const AugmentParams& p, const float* lut);

/// CUDA: images, keys and lut (256 floats) in device memory. Indices are not
/// checked on the device (the caller checks them on the host).
void augment_batch(float* out, const uint8_t* images, const int64_t* keys, int64_t batch, const AugmentParams& p,
                   const float* lut, cudaStream_t stream);
void augment_batch(bf16* out, const uint8_t* images, const int64_t* keys, int64_t batch, const AugmentParams& p,
                   const float* lut, cudaStream_t stream);

}  // namespace kiln
