// The model's random stream: a Philox seed and a counter offset that every
// consumer (dropout masks, ...) advances by what it draws. Saving (seed,
// offset) in a checkpoint makes a resumed run draw the same numbers as an
// uninterrupted one.
#pragma once

#include <cstdint>

namespace kiln::nn {

struct RngStream {
  uint64_t seed = 0;
  uint64_t offset = 0;
  /// Reserves `counters` counters and returns the first one.
  uint64_t take(uint64_t counters) {
    const uint64_t first = offset;
    offset += counters;
    return first;
  }
};

}  // namespace kiln::nn
