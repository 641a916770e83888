// conv2d_*(): geometry and argument checks shared by both backends, and the
// CPU backend (im2col + OpenBLAS through runtime/blas.h). The cuDNN backend is
// conv_cuda.cpp.
//
// CPU algorithm. In NHWC an output pixel's receptive field is R·S runs of
// C/G contiguous channels, so im2col copies whole channel runs:
//   col (rows = nb·P·Q, R·S·C/G)     one row per output pixel of nb images
//   forward          y_g   (rows, K/G) = col · W_gᵀ         W_g (K/G, R·S·C/G)
//   backward data    dcol  (rows, R·S·C/G) = dy_g · W_g, then col2im adds
//                    each row back into its receptive field of dx
//   backward filter  dW_g (K/G, R·S·C/G) += dy_gᵀ · col
// A 1x1, stride-1, unpadded convolution needs no col at all: x itself is the
// (N·H·W, C) matrix. Images go through in chunks whose col buffer stays near
// kColBytes (a few images at 28x28), so the buffer stays in cache between
// im2col and the GEMM; the chunking depends on the shape only, so every sum
// (dW over chunks, col2im's adds) runs in a fixed order: deterministic.
#include "runtime/conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>
#include <type_traits>
#include <vector>

#include "kernels/activation.h"
#include "runtime/blas.h"
#include "runtime/conv_detail.h"
#include "runtime/error.h"

namespace kiln {

double Conv2dGeometry::flops() const {
  return 2.0 * static_cast<double>(n) * static_cast<double>(out_h()) * static_cast<double>(out_w()) *
         static_cast<double>(k) * static_cast<double>(r * s) * static_cast<double>(groups > 0 ? c / groups : 0);
}

std::string Conv2dGeometry::str() const {
  std::ostringstream os;
  os << "n=" << n << " " << h << "x" << w << "x" << c << " -> " << k << " " << r << "x" << s << " s" << stride_h;
  if (stride_w != stride_h) os << "," << stride_w;
  os << " p" << pad_h;
  if (pad_w != pad_h) os << "," << pad_w;
  os << " d" << dilation_h;
  if (dilation_w != dilation_h) os << "," << dilation_w;
  os << " g" << groups;
  return os.str();
}

void check_conv2d_geometry(const Conv2dGeometry& g) {
  KILN_CHECK(g.n >= 0 && g.h >= 0 && g.w >= 0 && g.c >= 0,
             "conv2d: input (N, H, W, C) = (" << g.n << ", " << g.h << ", " << g.w << ", " << g.c
                                              << ") has a negative size");
  KILN_CHECK(g.k >= 0, "conv2d: k = " << g.k << " filters must be >= 0");
  KILN_CHECK(g.r >= 1 && g.s >= 1, "conv2d: filter window " << g.r << "x" << g.s << " must be at least 1x1");
  KILN_CHECK(g.stride_h >= 1 && g.stride_w >= 1,
             "conv2d: stride " << g.stride_h << "x" << g.stride_w << " must be >= 1");
  KILN_CHECK(g.pad_h >= 0 && g.pad_w >= 0, "conv2d: padding " << g.pad_h << "x" << g.pad_w << " must be >= 0");
  KILN_CHECK(g.dilation_h >= 1 && g.dilation_w >= 1,
             "conv2d: dilation " << g.dilation_h << "x" << g.dilation_w << " must be >= 1");
  KILN_CHECK(g.groups >= 1, "conv2d: groups = " << g.groups << " must be >= 1");
  KILN_CHECK(g.c % g.groups == 0 && g.k % g.groups == 0,
             "conv2d: groups = " << g.groups << " must divide both C = " << g.c << " and K = " << g.k);
  KILN_CHECK(g.out_h() >= 1 && g.out_w() >= 1,
             "conv2d: the " << g.r << "x" << g.s << " window (dilation " << g.dilation_h << "x" << g.dilation_w
                            << ") does not fit the " << g.h << "x" << g.w << " input padded by " << g.pad_h << "x"
                            << g.pad_w << " (" << g.str() << ")");
}

namespace {
std::atomic<bool> g_conv_deterministic{true};
}  // namespace

void set_conv_deterministic(bool on) { g_conv_deterministic = on; }
bool conv_deterministic() { return g_conv_deterministic; }

namespace detail {

const char* conv_op_name(ConvOp op) {
  switch (op) {
    case ConvOp::forward: return "conv2d_forward";
    case ConvOp::backward_data: return "conv2d_backward_data";
    case ConvOp::backward_filter: return "conv2d_backward_filter";
  }
  return "conv2d";
}

void check_conv2d_args(const Conv2dGeometry& g, ConvOp op, DType dtype, DType dw_dtype, const void* a,
                       const void* b, const void* out, Device device) {
  const char* name = conv_op_name(op);
  check_conv2d_geometry(g);
  if (dtype == DType::f64) {
    KILN_CHECK(device.is_cpu(), name << ": dtype f64 is supported on the CPU only, not on " << device.str());
  } else {
    KILN_CHECK(dtype == DType::f32 || dtype == DType::bf16,
               name << ": dtype " << dtype_name(dtype) << " is not supported (f32, bf16, or f64 on the CPU)");
  }
  if (op == ConvOp::backward_filter) {
    KILN_CHECK(dw_dtype == dtype || (dtype == DType::bf16 && dw_dtype == DType::f32),
               name << ": dw_dtype " << dtype_name(dw_dtype) << " with dtype " << dtype_name(dtype)
                    << " (dw is the activation dtype, or f32 with bf16)");
  }
  // Pointers may be null only for empty tensors.
  const int64_t xn = g.x_numel(), yn = g.y_numel(), wn = g.w_numel();
  int64_t an = 0, bn = 0, on = 0;
  const char *aname = "", *bname = "", *oname = "";
  switch (op) {
    case ConvOp::forward: an = xn; bn = wn; on = yn; aname = "x"; bname = "w"; oname = "y"; break;
    case ConvOp::backward_data: an = yn; bn = wn; on = xn; aname = "dy"; bname = "w"; oname = "dx"; break;
    case ConvOp::backward_filter: an = xn; bn = yn; on = wn; aname = "x"; bname = "dy"; oname = "dw"; break;
  }
  KILN_CHECK(an == 0 || a, name << ": " << aname << " is null for " << g.str());
  KILN_CHECK(bn == 0 || b, name << ": " << bname << " is null for " << g.str());
  KILN_CHECK(on == 0 || out, name << ": " << oname << " is null for " << g.str());
}

}  // namespace detail

namespace {

// Bytes of col one chunk of images may use (see the top of the file).
constexpr int64_t kColBytes = int64_t(2) << 20;

template <typename T> constexpr DType dt() { return std::is_same<T, double>::value ? DType::f64 : DType::f32; }

// The shape arithmetic of the CPU algorithm for one geometry.
struct Plan {
  int64_t P, Q, Cg, Kg, RSC, PQ;
  bool direct;  // 1x1, stride 1, no padding: x is col
  int64_t chunk;  // images per chunk

  Plan(const Conv2dGeometry& g, size_t esize) {
    P = g.out_h();
    Q = g.out_w();
    PQ = P * Q;
    Cg = g.c / g.groups;
    Kg = g.k / g.groups;
    RSC = g.r * g.s * Cg;
    direct = g.r == 1 && g.s == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
    const int64_t per_image = std::max<int64_t>(1, PQ * RSC * static_cast<int64_t>(esize));
    chunk = direct ? std::max<int64_t>(g.n, 1) : std::max<int64_t>(1, kColBytes / per_image);
  }
};

// col (nb·P·Q, R·S·Cg) for images [n0, n0 + nb) and group gi of x (N, H, W, C).
template <typename T>
void im2col(const Conv2dGeometry& g, const Plan& pl, const T* x, int64_t n0, int64_t nb, int64_t gi, T* col) {
  const int64_t Cg = pl.Cg, run = g.s * Cg;
  for (int64_t n = 0; n < nb; ++n) {
    const T* xn = x + (n0 + n) * g.h * g.w * g.c + gi * Cg;  // (H, W, C) at channel gi·Cg
    for (int64_t p = 0; p < pl.P; ++p) {
      for (int64_t q = 0; q < pl.Q; ++q) {
        T* row = col + ((n * pl.P + p) * pl.Q + q) * pl.RSC;  // (R, S, Cg)
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t ih = p * g.stride_h - g.pad_h + r * g.dilation_h;
          T* rr = row + r * run;
          if (ih < 0 || ih >= g.h) {
            std::fill(rr, rr + run, T(0));
            continue;
          }
          for (int64_t s = 0; s < g.s; ++s) {
            const int64_t iw = q * g.stride_w - g.pad_w + s * g.dilation_w;
            T* dst = rr + s * Cg;
            if (iw < 0 || iw >= g.w) std::fill(dst, dst + Cg, T(0));
            else if (Cg == 1) *dst = xn[ih * g.w * g.c + iw * g.c];
            else if (Cg > 1) std::memcpy(dst, xn + ih * g.w * g.c + iw * g.c, static_cast<size_t>(Cg) * sizeof(T));
            // Cg == 0 (empty tensors): nothing to copy, and memcpy may not be given their null pointers.
          }
        }
      }
    }
  }
}

// dx (N, H, W, C) += col2im(dcol) for images [n0, n0 + nb), group gi.
template <typename T>
void col2im_add(const Conv2dGeometry& g, const Plan& pl, const T* dcol, int64_t n0, int64_t nb, int64_t gi, T* dx) {
  const int64_t Cg = pl.Cg;
  for (int64_t n = 0; n < nb; ++n) {
    T* dxn = dx + (n0 + n) * g.h * g.w * g.c + gi * Cg;
    for (int64_t p = 0; p < pl.P; ++p) {
      for (int64_t q = 0; q < pl.Q; ++q) {
        const T* row = dcol + ((n * pl.P + p) * pl.Q + q) * pl.RSC;
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t ih = p * g.stride_h - g.pad_h + r * g.dilation_h;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t s = 0; s < g.s; ++s) {
            const int64_t iw = q * g.stride_w - g.pad_w + s * g.dilation_w;
            if (iw < 0 || iw >= g.w) continue;
            T* dst = dxn + ih * g.w * g.c + iw * g.c;
            const T* src = row + (r * g.s + s) * Cg;
            for (int64_t c = 0; c < Cg; ++c) dst[c] += src[c];
          }
        }
      }
    }
  }
}

// C (m, n; ldc) = beta·C + op(A)·op(B) in T's dtype on the CPU.
template <typename T>
void mm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
        float beta, T* c, int64_t ldc) {
  GemmArgs ga;
  ga.trans_a = ta;
  ga.trans_b = tb;
  ga.m = m; ga.n = n; ga.k = k;
  ga.a = a; ga.lda = lda;
  ga.b = b; ga.ldb = ldb;
  ga.c = c; ga.ldc = ldc;
  ga.beta = beta;
  ga.in_dtype = ga.out_dtype = dt<T>();
  gemm(ga, Device::cpu());
}

template <typename T>
void forward_t(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const Plan pl(g, sizeof(T));
  if (g.y_numel() == 0) return;
  std::vector<T> col(pl.direct ? 0 : static_cast<size_t>(std::min(pl.chunk, g.n) * pl.PQ * pl.RSC));
  for (int64_t n0 = 0; n0 < g.n; n0 += pl.chunk) {
    const int64_t nb = std::min(pl.chunk, g.n - n0), rows = nb * pl.PQ;
    T* yc = y + n0 * pl.PQ * g.k;  // (rows, K)
    if (bias)
      for (int64_t i = 0; i < rows; ++i) std::copy(bias, bias + g.k, yc + i * g.k);
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      const T* a;
      int64_t lda;
      if (pl.direct) {
        a = x + n0 * g.h * g.w * g.c + gi * pl.Cg;
        lda = g.c;
      } else {
        im2col(g, pl, x, n0, nb, gi, col.data());
        a = col.data();
        lda = pl.RSC;
      }
      // y_g (rows, Kg) = col (rows, RSC) · W_gᵀ, W_g (Kg, RSC)
      mm<T>(false, true, rows, pl.Kg, pl.RSC, a, lda, w + gi * pl.Kg * pl.RSC, pl.RSC, bias ? 1.0f : 0.0f,
            yc + gi * pl.Kg, g.k);
    }
  }
}

template <typename T>
void backward_data_t(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const Plan pl(g, sizeof(T));
  if (g.x_numel() == 0) return;
  if (pl.direct) {
    // dx_g (N·H·W, Cg) = dy_g (N·H·W, Kg) · W_g (Kg, Cg)
    for (int64_t gi = 0; gi < g.groups; ++gi)
      mm<T>(false, false, g.n * pl.PQ, pl.Cg, pl.Kg, dy + gi * pl.Kg, g.k, w + gi * pl.Kg * pl.RSC, pl.RSC, 0.0f,
            dx + gi * pl.Cg, g.c);
    return;
  }
  std::fill(dx, dx + g.x_numel(), T(0));
  std::vector<T> dcol(static_cast<size_t>(std::min(pl.chunk, g.n) * pl.PQ * pl.RSC));
  for (int64_t n0 = 0; n0 < g.n; n0 += pl.chunk) {
    const int64_t nb = std::min(pl.chunk, g.n - n0), rows = nb * pl.PQ;
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      // dcol (rows, RSC) = dy_g (rows, Kg) · W_g (Kg, RSC)
      mm<T>(false, false, rows, pl.RSC, pl.Kg, dy + n0 * pl.PQ * g.k + gi * pl.Kg, g.k, w + gi * pl.Kg * pl.RSC,
            pl.RSC, 0.0f, dcol.data(), pl.RSC);
      col2im_add(g, pl, dcol.data(), n0, nb, gi, dx);
    }
  }
}

template <typename T>
void backward_filter_t(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, bool accumulate, T* dbias) {
  const Plan pl(g, sizeof(T));
  if (dbias && g.y_numel() > 0) bias_backward_cpu<T>(dbias, dy, g.n * pl.PQ, g.k);
  if (g.w_numel() == 0) return;
  if (g.n == 0 || pl.RSC == 0) {
    if (!accumulate) std::fill(dw, dw + g.w_numel(), T(0));
    return;
  }
  std::vector<T> col(pl.direct ? 0 : static_cast<size_t>(std::min(pl.chunk, g.n) * pl.PQ * pl.RSC));
  for (int64_t n0 = 0; n0 < g.n; n0 += pl.chunk) {
    const int64_t nb = std::min(pl.chunk, g.n - n0), rows = nb * pl.PQ;
    const float beta = (n0 == 0 && !accumulate) ? 0.0f : 1.0f;
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      const T* b;
      int64_t ldb;
      if (pl.direct) {
        b = x + n0 * g.h * g.w * g.c + gi * pl.Cg;
        ldb = g.c;
      } else {
        im2col(g, pl, x, n0, nb, gi, col.data());
        b = col.data();
        ldb = pl.RSC;
      }
      // dW_g (Kg, RSC) = beta·dW_g + dy_gᵀ (Kg, rows) · col (rows, RSC)
      mm<T>(true, false, pl.Kg, pl.RSC, rows, dy + n0 * pl.PQ * g.k + gi * pl.Kg, g.k, b, ldb, beta,
            dw + gi * pl.Kg * pl.RSC, pl.RSC);
    }
  }
}

std::vector<float> widen(const void* p, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  const bf16* b = static_cast<const bf16*>(p);
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = bf16_to_float(b[i]);
  return v;
}

void narrow(const std::vector<float>& v, void* p) {
  bf16* b = static_cast<bf16*>(p);
  for (size_t i = 0; i < v.size(); ++i) b[i] = float_to_bf16(v[i]);
}

}  // namespace

namespace detail {

void cpu_conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias,
                        void* y) {
  if (dtype == DType::f64) {
    forward_t<double>(g, static_cast<const double*>(x), static_cast<const double*>(w),
                      static_cast<const double*>(bias), static_cast<double*>(y));
  } else if (dtype == DType::f32) {
    forward_t<float>(g, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(bias),
                     static_cast<float*>(y));
  } else {  // bf16: widen, compute in fp32, round once
    const std::vector<float> xf = widen(x, g.x_numel()), wf = widen(w, g.w_numel());
    std::vector<float> yf(static_cast<size_t>(g.y_numel()));
    forward_t<float>(g, xf.data(), wf.data(), static_cast<const float*>(bias), yf.data());
    narrow(yf, y);
  }
}

void cpu_conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx) {
  if (dtype == DType::f64) {
    backward_data_t<double>(g, static_cast<const double*>(dy), static_cast<const double*>(w),
                            static_cast<double*>(dx));
  } else if (dtype == DType::f32) {
    backward_data_t<float>(g, static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx));
  } else {
    const std::vector<float> dyf = widen(dy, g.y_numel()), wf = widen(w, g.w_numel());
    std::vector<float> dxf(static_cast<size_t>(g.x_numel()));
    backward_data_t<float>(g, dyf.data(), wf.data(), dxf.data());
    narrow(dxf, dx);
  }
}

void cpu_conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                                DType dw_dtype, bool accumulate, void* dbias) {
  if (dtype == DType::f64) {
    backward_filter_t<double>(g, static_cast<const double*>(x), static_cast<const double*>(dy),
                              static_cast<double*>(dw), accumulate, static_cast<double*>(dbias));
  } else if (dtype == DType::f32) {
    backward_filter_t<float>(g, static_cast<const float*>(x), static_cast<const float*>(dy), static_cast<float*>(dw),
                             accumulate, static_cast<float*>(dbias));
  } else {
    const std::vector<float> xf = widen(x, g.x_numel()), dyf = widen(dy, g.y_numel());
    if (dw_dtype == DType::f32) {
      backward_filter_t<float>(g, xf.data(), dyf.data(), static_cast<float*>(dw), accumulate,
                               static_cast<float*>(dbias));
    } else {
      std::vector<float> dwf = accumulate ? widen(dw, g.w_numel()) : std::vector<float>(g.w_numel());
      backward_filter_t<float>(g, xf.data(), dyf.data(), dwf.data(), accumulate, static_cast<float*>(dbias));
      narrow(dwf, dw);
    }
  }
}

}  // namespace detail

void conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias, void* y,
                    Device device, cudaStream_t stream) {
  detail::check_conv2d_args(g, detail::ConvOp::forward, dtype, dtype, x, w, y, device);
  if (device.is_cpu()) return detail::cpu_conv2d_forward(g, dtype, x, w, bias, y);
#if KILN_WITH_CUDA
  detail::cuda_conv2d_forward(g, dtype, x, w, bias, y, device, stream);
#else
  KILN_CHECK(false, "conv2d_forward on " << device.str() << ": this kiln was built without CUDA");
#endif
}

void conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx,
                          Device device, cudaStream_t stream) {
  detail::check_conv2d_args(g, detail::ConvOp::backward_data, dtype, dtype, dy, w, dx, device);
  if (device.is_cpu()) return detail::cpu_conv2d_backward_data(g, dtype, dy, w, dx);
#if KILN_WITH_CUDA
  detail::cuda_conv2d_backward_data(g, dtype, dy, w, dx, device, stream);
#else
  KILN_CHECK(false, "conv2d_backward_data on " << device.str() << ": this kiln was built without CUDA");
#endif
}

void conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                            DType dw_dtype, bool accumulate, void* dbias, Device device, cudaStream_t stream) {
  detail::check_conv2d_args(g, detail::ConvOp::backward_filter, dtype, dw_dtype, x, dy, dw, device);
  if (device.is_cpu()) return detail::cpu_conv2d_backward_filter(g, dtype, x, dy, dw, dw_dtype, accumulate, dbias);
#if KILN_WITH_CUDA
  detail::cuda_conv2d_backward_filter(g, dtype, x, dy, dw, dw_dtype, accumulate, dbias, device, stream);
#else
  KILN_CHECK(false, "conv2d_backward_filter on " << device.str() << ": this kiln was built without CUDA");
#endif
}

}  // namespace kiln
