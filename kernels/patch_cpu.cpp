// CPU references for kernels/patch.h (T = float, double), and the shape check
// both backends share.
//
// Both directions walk the output of the forward in order and copy runs of
// p·C contiguous values (one row of one patch is contiguous in the image
// too), so each is a sequence of memcpy-sized moves.
#include <algorithm>

#include "kernels/patch.h"
#include "runtime/error.h"

namespace kiln {

void check_patch_shape(int64_t B, int64_t H, int64_t W, int64_t C, int64_t p, const char* who) {
  KILN_INPUT_CHECK(B >= 0 && H >= 0 && W >= 0 && C >= 0,
                   who << ": bad image shape (B " << B << ", H " << H << ", W " << W << ", C " << C << ")");
  KILN_INPUT_CHECK(p >= 1, who << ": patch size " << p << " must be at least 1");
  KILN_INPUT_CHECK(H % p == 0 && W % p == 0,
                   who << ": patch size " << p << " does not divide the image " << H << "x" << W);
}

namespace {

// Calls move(patch_row_offset, image_row_offset) for every run of p·C values:
// patch-major output offsets in increasing order, with the image offset of
// the same run.
template <typename Move>
void for_each_run(int64_t B, int64_t H, int64_t W, int64_t C, int64_t p, Move move) {
  const int64_t gh = H / p, gw = W / p, run = p * C;
  int64_t o = 0;  // offset into (B, N, p·p·C)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < gh; ++py)
      for (int64_t px = 0; px < gw; ++px)
        for (int64_t iy = 0; iy < p; ++iy, o += run) {
          const int64_t i = ((b * H + py * p + iy) * W + px * p) * C;  // x[b, py·p + iy, px·p, 0]
          move(o, i);
        }
}

}  // namespace

template <typename T>
void patch_forward_cpu(T* out, const T* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p) {
  check_patch_shape(B, H, W, C, p, "patch_forward_cpu");
  const int64_t run = p * C;
  for_each_run(B, H, W, C, p, [&](int64_t o, int64_t i) { std::copy(x + i, x + i + run, out + o); });
}

template <typename T>
void patch_backward_cpu(T* dx, const T* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p) {
  check_patch_shape(B, H, W, C, p, "patch_backward_cpu");
  const int64_t run = p * C;
  for_each_run(B, H, W, C, p, [&](int64_t o, int64_t i) { std::copy(dout + o, dout + o + run, dx + i); });
}

template void patch_forward_cpu<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void patch_forward_cpu<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void patch_backward_cpu<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void patch_backward_cpu<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace kiln
