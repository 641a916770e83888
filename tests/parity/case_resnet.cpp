// Parity case for the ResNet (nn/resnet.h): stem conv3x3-BN-ReLU, basic
// blocks with identity and 1x1 stride-2 projection shortcuts, global average
// pool, Linear. Odd sizes throughout: 9x11 images with 3 channels (stride 2:
// 9x11 -> 5x6 -> 3x3), stages {4, 6, 8} with {2, 1, 1} blocks (the second
// block of stage 0 has an identity shortcut, stages 1 and 2 project), 5
// classes, batch 8. Running statistics are checked as in case_cnn.cpp.
#include "nn/resnet.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {

// case_cnn.cpp
void write_buffers(nn::Module& m, DType master, const std::string& dir, nlohmann::json& extra);
Batch image_batch(int64_t h, int64_t w, int64_t c, int64_t classes, uint64_t seed);
void train_settings(Case& c);

namespace {

Case resnet_case() {
  Case c;
  c.name = "resnet";
  c.torch_model = "cnn";
  nn::ResNetOptions o;
  o.in_channels = 3;
  o.height = 9;
  o.width = 11;
  o.classes = 5;
  o.channels = {4, 6, 8};
  o.blocks = {2, 1, 1};
  o.zero_init_residual = false;  // the noise would move a zero weight anyway
  o.seed = 17;
  c.build = [o] {
    Built b;
    b.model = std::make_unique<nn::ResNet>(o);
    b.config = {{"arch", "resnet"},       {"height", o.height},   {"width", o.width},
                {"in_channels", o.in_channels}, {"classes", o.classes}, {"channels", o.channels},
                {"blocks", o.blocks},     {"bn_momentum", o.bn_momentum}, {"bn_eps", o.bn_eps}};
    return b;
  };
  c.batch = [o] { return image_batch(o.height, o.width, o.in_channels, o.classes, 93); };
  train_settings(c);
  c.max_norm = 1.0;  // norms run about 0.8..2.7 over the 10 steps: clips 6 of them
  return c;
}

KILN_PARITY_CASE(resnet_case);

}  // namespace
}  // namespace kiln::parity
