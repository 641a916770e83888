// Parity cases for the plain CNN (nn/cnn.h) and, through it, Conv2d,
// BatchNorm2d (train-mode batch statistics, running statistics, eval), the
// pools and the NHWC flatten. Dropout 0.
//
//   10x12 images with 2 channels (not square, so an H/W mix-up shows), batch 8.
//   cnn      stages {3, 5} channels with {2, 1} conv3x3-BN-ReLU layers, 2x2 max
//            pooling (10x12 -> 5x6 -> 2x3: the second pool drops a row), a
//            flatten of 2x3x5 features, hidden Linear 7, 4 classes
//   cnn_avg  stages {4, 6} with one 5x5 conv each, 2x2 average pooling, global
//            average pool head, no hidden layer, 3 classes
// The driver trains in train mode (each forward moves the running statistics
// at once, as PyTorch does) and evaluates the final logits in eval mode, so
// they depend on the running statistics; after_training also writes every
// BatchNorm buffer, which torch_cnn.py compares with PyTorch's.
#include "data/safetensors_tensor.h"
#include "nn/cnn.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {

// Writes every buffer (BatchNorm running_mean / running_var) of `m` in the
// master dtype to DIR/buffers.safetensors and names the file in `extra`.
void write_buffers(nn::Module& m, DType master, const std::string& dir, nlohmann::json& extra) {
  std::vector<NamedTensor> out;
  for (nn::Buffer* b : m.buffers()) {
    Tensor h = b->value.device().is_cpu() ? b->value : b->value.to(Device::cpu());
    out.emplace_back(b->name, h.dtype() == master ? h.clone() : h.cast(master));
  }
  write_named_tensors(dir + "/buffers.safetensors", out);
  extra["buffers"] = "buffers.safetensors";
  extra["buffer_count"] = out.size();
}

// 8 images of (H, W, C) in [-1.5, 1.5) and targets in [0, classes).
Batch image_batch(int64_t h, int64_t w, int64_t c, int64_t classes, uint64_t seed) {
  constexpr int64_t kBatch = 8;  // the loss's 1/rows is exact in float
  Batch b;
  b.input = Tensor::empty({kBatch, h, w, c}, DType::f32, Device::cpu(), "images");
  b.input.uniform_(seed, 0, -1.5f, 1.5f);  // (B, H, W, C)
  Tensor u = Tensor::empty({kBatch}, DType::f32, Device::cpu());
  u.uniform_(seed + 1, 0, 0.0f, 1.0f);
  for (float v : u.to_vector())
    b.targets.push_back(std::min<int32_t>(static_cast<int32_t>(v * classes), static_cast<int32_t>(classes - 1)));
  b.classes = classes;
  return b;
}

// AdamW with warm-up + cosine, as the other cases.
void train_settings(Case& c) {
  c.init_noise = 0.1f;
  adamw_ten_steps(c, 0.05, 0.999);
  c.after_training = write_buffers;
}

namespace {

Case cnn_case(const std::string& name, bool avg) {
  Case c;
  c.name = name;
  c.torch_model = "cnn";
  nn::CnnOptions o;
  o.in_channels = 2;
  o.height = 10;
  o.width = 12;
  if (avg) {
    o.classes = 3;
    o.channels = {4, 6};
    o.blocks = {1, 1};
    o.kernel = 5;
    o.pool = nn::PoolKind::avg;
    o.global_pool = true;
    o.hidden = 0;
  } else {
    o.classes = 4;
    o.channels = {3, 5};
    o.blocks = {2, 1};
    o.kernel = 3;
    o.pool = nn::PoolKind::max;
    o.global_pool = false;
    o.hidden = 7;
  }
  o.dropout = 0.0f;
  o.seed = 13;
  c.build = [o] {
    Built b;
    b.model = std::make_unique<nn::Cnn>(o, std::make_shared<nn::RngStream>());
    b.config = {{"arch", "cnn"},
                {"height", o.height},
                {"width", o.width},
                {"in_channels", o.in_channels},
                {"classes", o.classes},
                {"channels", o.channels},
                {"blocks", o.blocks},
                {"kernel", o.kernel},
                {"pool", o.pool == nn::PoolKind::max ? "max" : "avg"},
                {"head", o.global_pool ? "avgpool" : "flatten"},
                {"hidden", o.hidden},
                {"bn_momentum", o.bn_momentum},
                {"bn_eps", o.bn_eps}};
    return b;
  };
  c.batch = [o] { return image_batch(o.height, o.width, o.in_channels, o.classes, 91); };
  train_settings(c);
  // Unclipped gradient norms run about 1.1..2.3 (cnn) and 0.26..0.31
  // (cnn_avg) over the 10 steps: these limits clip some steps and not others.
  c.max_norm = avg ? 0.28 : 1.5;
  return c;
}

KILN_PARITY_CASE([] { return cnn_case("cnn", false); });
KILN_PARITY_CASE([] { return cnn_case("cnn_avg", true); });

}  // namespace
}  // namespace kiln::parity
