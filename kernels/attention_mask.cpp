// Host check of the segment-id precondition (kernels/attention_mask.h).
#include "kernels/attention_mask.h"

#include "runtime/error.h"

namespace kiln {

void check_attention_segments(const int32_t* segment_ids, int B, int T, const char* who) {
  if (segment_ids == nullptr) return;
  for (int b = 0; b < B; ++b) {
    const int32_t* row = segment_ids + static_cast<int64_t>(b) * T;  // (T)
    for (int t = 1; t < T; ++t)
      KILN_INPUT_CHECK(row[t - 1] <= row[t],
                       who << ": segment ids of batch row " << b << " decrease at position " << t << " (" << row[t]
                           << " after " << row[t - 1]
                           << "); each packed example must be one contiguous run of tokens, numbered in "
                              "non-decreasing order along the row");
  }
}

}  // namespace kiln
