// CPU references for kernels/embedding.h (T = float, double).
#include <algorithm>
#include <vector>

#include "kernels/embedding.h"
#include "runtime/error.h"

namespace kiln {

namespace {

// Every id is checked before anything is written, so bad input leaves the
// outputs and gradients untouched.
void check_ids(const int32_t* ids, int64_t n, int64_t vocab, const char* who) {
  for (int64_t i = 0; i < n; ++i) {
    KILN_INPUT_CHECK(ids[i] >= 0 && ids[i] < vocab, who << ": token id " << ids[i] << " at position " << i
                                                        << " is outside the vocabulary [0, " << vocab << ")");
  }
}

void check_shape(int64_t n, int64_t channels, int64_t vocab, const char* who) {
  KILN_CHECK(n >= 0 && channels >= 0 && vocab >= 0,
             who << ": bad shape (n " << n << ", channels " << channels << ", vocab " << vocab << ")");
}

// dtable[v] += Σ dout[i] over the positions i with ids[i] = v, in increasing i,
// into a fresh accumulator per row (the order the GPU uses too). Positions are
// bucketed by a stable counting sort.
template <typename T>
void scatter_rows(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels, int64_t vocab) {
  std::vector<int64_t> start(static_cast<size_t>(vocab) + 1, 0);  // (V + 1) bucket offsets
  for (int64_t i = 0; i < n; ++i) ++start[ids[i] + 1];
  for (int64_t v = 0; v < vocab; ++v) start[v + 1] += start[v];
  std::vector<int64_t> order(static_cast<size_t>(n));  // positions grouped by id, increasing within a group
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[fill[ids[i]]++] = i;
  std::vector<T> acc(static_cast<size_t>(channels));  // (C)
  for (int64_t v = 0; v < vocab; ++v) {
    if (start[v] == start[v + 1]) continue;
    std::fill(acc.begin(), acc.end(), T(0));
    for (int64_t k = start[v]; k < start[v + 1]; ++k) {
      const T* d = dout + order[k] * channels;  // (C)
      for (int64_t c = 0; c < channels; ++c) acc[c] += d[c];
    }
    T* row = dtable + v * channels;  // (C)
    for (int64_t c = 0; c < channels; ++c) row[c] += acc[c];
  }
}

}  // namespace

template <typename T>
void embedding_forward_cpu(T* out, const int32_t* tokens, const T* wte, const T* wpe, int64_t batch, int64_t seq,
                           int64_t channels, int64_t vocab) {
  KILN_CHECK(batch >= 0 && seq >= 0, "embedding_forward_cpu: bad shape (" << batch << ", " << seq << ")");
  check_shape(batch * seq, channels, vocab, "embedding_forward_cpu");
  check_ids(tokens, batch * seq, vocab, "embedding_forward_cpu");
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t row = b * seq + t;
      const T* e = wte + static_cast<int64_t>(tokens[row]) * channels;  // (C)
      const T* p = wpe + t * channels;                                  // (C)
      T* o = out + row * channels;                                      // (C)
      for (int64_t c = 0; c < channels; ++c) o[c] = e[c] + p[c];
    }
  }
}

template <typename T>
void embedding_backward_cpu(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int64_t batch, int64_t seq,
                            int64_t channels, int64_t vocab) {
  KILN_CHECK(batch >= 0 && seq >= 0, "embedding_backward_cpu: bad shape (" << batch << ", " << seq << ")");
  check_shape(batch * seq, channels, vocab, "embedding_backward_cpu");
  check_ids(tokens, batch * seq, vocab, "embedding_backward_cpu");
  scatter_rows(dwte, dout, tokens, batch * seq, channels, vocab);
  if (dwpe == nullptr || batch == 0) return;
  std::vector<T> acc(static_cast<size_t>(channels));  // (C)
  for (int64_t t = 0; t < seq; ++t) {
    std::fill(acc.begin(), acc.end(), T(0));
    for (int64_t b = 0; b < batch; ++b) {
      const T* d = dout + (b * seq + t) * channels;  // (C)
      for (int64_t c = 0; c < channels; ++c) acc[c] += d[c];
    }
    T* row = dwpe + t * channels;
    for (int64_t c = 0; c < channels; ++c) row[c] += acc[c];
  }
}

template <typename T>
void embedding_lookup_forward_cpu(T* out, const int32_t* ids, const T* table, int64_t n, int64_t channels,
                                  int64_t vocab) {
  check_shape(n, channels, vocab, "embedding_lookup_forward_cpu");
  check_ids(ids, n, vocab, "embedding_lookup_forward_cpu");
  for (int64_t i = 0; i < n; ++i) {
    const T* e = table + static_cast<int64_t>(ids[i]) * channels;
    std::copy(e, e + channels, out + i * channels);
  }
}

template <typename T>
void embedding_lookup_backward_cpu(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels,
                                   int64_t vocab) {
  check_shape(n, channels, vocab, "embedding_lookup_backward_cpu");
  check_ids(ids, n, vocab, "embedding_lookup_backward_cpu");
  scatter_rows(dtable, dout, ids, n, channels, vocab);
}

#define KILN_INSTANTIATE(T)                                                                                   \
  template void embedding_forward_cpu<T>(T*, const int32_t*, const T*, const T*, int64_t, int64_t, int64_t,    \
                                         int64_t);                                                            \
  template void embedding_backward_cpu<T>(T*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t,         \
                                          int64_t);                                                           \
  template void embedding_lookup_forward_cpu<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t);      \
  template void embedding_lookup_backward_cpu<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)
#undef KILN_INSTANTIATE

}  // namespace kiln
