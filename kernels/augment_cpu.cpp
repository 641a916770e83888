// CPU reference of the batch gather + crop + flip + normalize (see augment.h).
#include "kernels/augment.h"
#include "runtime/error.h"

namespace kiln {

void augment_lut(float* lut, bool normalize, float mean, float std) {
  for (int v = 0; v < 256; ++v) {
    const float x = static_cast<float>(v) / 255.0f;
    lut[v] = normalize ? (x - mean) / std : x;
  }
}

void check_augment(const AugmentParams& p, int64_t batch, const char* op) {
  KILN_CHECK(batch >= 0 && p.h >= 0 && p.w >= 0 && p.c >= 0,
             op << ": bad shape (batch " << batch << ", " << p.h << "x" << p.w << "x" << p.c << ")");
  KILN_CHECK(p.pad >= 0 && p.pad <= 0x7fff, op << ": crop padding " << p.pad << " must be in [0, 32767]");
}

template <typename T>
void augment_batch_cpu(T* out, const uint8_t* images, int64_t n_images, const int64_t* keys, int64_t batch,
                       const AugmentParams& p, const float* lut) {
  check_augment(p, batch, "augment_batch_cpu");
  const int64_t H = p.h, W = p.w, C = p.c, plane = H * W * C;
  const T zero = static_cast<T>(lut[0]);  // padding is a black pixel, normalized like any other
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t s = augment_index(keys[b]);
    KILN_CHECK(keys[b] >= 0 && s < n_images, "augment_batch_cpu: key " << keys[b] << " of sample " << b
                                                 << " names image " << s << " of " << n_images);
    const AugmentDraw d = augment_draw(p, keys[b]);
    const uint8_t* img = images + s * plane;  // (H, W, C)
    T* o = out + b * plane;
    for (int64_t i = 0; i < H; ++i) {
      const int64_t si = i + d.oy - p.pad;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t sj = (d.flip ? W - 1 - j : j) + d.ox - p.pad;
        T* px = o + (i * W + j) * C;
        if (si < 0 || si >= H || sj < 0 || sj >= W) {
          for (int64_t c = 0; c < C; ++c) px[c] = zero;
        } else {
          const uint8_t* src = img + (si * W + sj) * C;
          for (int64_t c = 0; c < C; ++c) px[c] = static_cast<T>(lut[src[c]]);
        }
      }
    }
  }
}

template void augment_batch_cpu<float>(float*, const uint8_t*, int64_t, const int64_t*, int64_t, const AugmentParams&,
                                       const float*);
template void augment_batch_cpu<double>(double*, const uint8_t*, int64_t, const int64_t*, int64_t,
                                        const AugmentParams&, const float*);

}  // namespace kiln
