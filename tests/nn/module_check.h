// Generic checks every nn module goes through:
//  - check_module_gradients: the module in f64 on the CPU, L = Σ y ⊙ w with
//    random w; backward(w) must match central differences for the input and
//    for every parameter (tests/harness/gradcheck.h).
//  - compare_cpu_cuda: the same module and input on the CPU (f32) and on the
//    GPU (f32, and bf16 when asked), forward outputs, input gradients and
//    parameter gradients compared with the harness tolerances.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "nn/module.h"
#include "runtime/tensor.h"

namespace kiln::test {

using ModuleFactory = std::function<std::unique_ptr<nn::Module>()>;

/// `input` builds the input for a device/dtype (random values, or token ids).
using InputFactory = std::function<Tensor(Device, DType)>;

::testing::AssertionResult check_module_gradients(const ModuleFactory& make, const InputFactory& input,
                                                  const std::string& what, bool check_input_grad = true);

::testing::AssertionResult compare_cpu_cuda(const ModuleFactory& make, const InputFactory& input, DType gpu_dtype,
                                            const std::string& what, bool check_input_grad = true);

/// Random uniform input of `shape` in [-1, 1) (seeded), in dtype on device.
InputFactory random_input(const Shape& shape, uint64_t seed);

}  // namespace kiln::test
