#include "nn/sequential.h"

#include "runtime/nvtx.h"

namespace kiln::nn {

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& l : layers_) {
    NvtxRange r("forward");
    h = l->forward(h);
  }
  return h;
}

Tensor Sequential::backward(const Tensor& dy) {
  Tensor g = dy;
  for (size_t i = layers_.size(); i-- > 0;) {
    NvtxRange r("backward");
    g = layers_[i]->backward(g);
    if (!g.defined()) break;  // a layer that needs no input gradient ends the chain
  }
  return g;
}

}  // namespace kiln::nn
