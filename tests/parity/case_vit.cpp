// Parity cases for the ViT (nn/vit.h): a tiny ViT on NHWC images, dropout 0.
//
//   8x12 images with 2 channels in 4x4 patches (a 2 x 3 grid: 6 tokens of 32
//   values, so a row/column mix-up in the patch order shows), width 32, 2
//   pre-LN blocks with 2 heads of 16 (1/sqrt(16) is exact in float), MLP 48
//   (not 4·width: the hidden width is a parameter), 5 classes, batch 8.
//   vit_cls   a class token, read out through the final LayerNorm
//   vit_mean  no class token, the mean of the patch tokens
// The PyTorch side (torch_vit.py) embeds the patches with a Conv2d(C, dim, p,
// stride p) on NCHW images, as timm does, so kiln's (dim, p·p·C) projection
// has to be exactly that convolution's weight permuted.
#include "nn/vit.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {
namespace {

// 8 rows: the loss's 1/rows is exact in float, which kiln's cross-entropy
// scale is even in f64.
constexpr int64_t kBatch = 8;

Case vit_case(const std::string& name, nn::VitPool pool) {
  Case c;
  c.name = name;
  c.torch_model = "vit";
  nn::VitOptions o;
  o.image_h = 8;
  o.image_w = 12;
  o.channels = 2;
  o.patch = 4;
  o.dim = 32;
  o.depth = 2;
  o.heads = 2;
  o.mlp_hidden = 48;
  o.classes = 5;
  o.pool = pool;
  o.dropout = 0.0f;
  o.seed = 11;
  c.build = [o] {
    Built b;
    b.model = std::make_unique<nn::Vit>(o, std::make_shared<nn::RngStream>());
    b.config = {{"image_h", o.image_h}, {"image_w", o.image_w}, {"channels", o.channels},
                {"patch", o.patch},     {"dim", o.dim},         {"depth", o.depth},
                {"heads", o.heads},     {"mlp_hidden", o.mlp_hidden}, {"classes", o.classes},
                {"pool", o.pool == nn::VitPool::cls ? "cls" : "mean"}};
    return b;
  };
  c.batch = [o] {
    Batch b;
    b.input = Tensor::empty({kBatch, o.image_h, o.image_w, o.channels}, DType::f32, Device::cpu(), "images");
    b.input.uniform_(/*seed=*/81, 0, -1.5f, 1.5f);  // (B, H, W, C)
    Tensor u = Tensor::empty({kBatch}, DType::f32, Device::cpu());
    u.uniform_(/*seed=*/82, 0, 0.0f, 1.0f);
    for (float v : u.to_vector())
      b.targets.push_back(std::min<int32_t>(static_cast<int32_t>(v * o.classes), o.classes - 1));
    b.classes = o.classes;
    return b;
  };
  c.init_noise = 0.1f;
  adamw_ten_steps(c, 0.05, 0.999);
  // Gradient norms run 0.24..6.4 (cls) and 0.19..3.3 (mean) over the 10
  // steps: 1.0 clips 4 (cls) and 3 (mean) of them.
  c.max_norm = 1.0;
  return c;
}

KILN_PARITY_CASE([] { return vit_case("vit_cls", nn::VitPool::cls); });
KILN_PARITY_CASE([] { return vit_case("vit_mean", nn::VitPool::mean); });

}  // namespace
}  // namespace kiln::parity
