// CPU references for kernels/embedding.h (T = float, double), threaded on the
// CPU pool (runtime/parallel.h): the forward by output rows, the backward by
// table rows (each vocabulary row, and each position row of dwpe, is summed
// by one part in the fixed order below), so no result depends on the thread
// count.
#include <algorithm>
#include <vector>

#include "kernels/embedding.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

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

// Elements per part below which another thread does not pay (~10 µs).
constexpr int64_t kPerPart = int64_t{1} << 15;

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
  // Parts own contiguous ranges of vocabulary rows, cut where the positions
  // they sum are about evenly shared (the cut depends on the work only).
  const int parts = parallel_parts(n * channels, kPerPart);
  parallel_run(parts, [&](int p, int np) {
    // First vocabulary row of part q: the bucket holding position n·q/np.
    auto first_row = [&](int q) -> int64_t {
      if (q == 0) return 0;
      if (q == np) return vocab;
      const int64_t k = split_begin(n, np, q);
      return std::upper_bound(start.begin(), start.end(), k) - start.begin() - 1;
    };
    const int64_t v0 = first_row(p), v1 = first_row(p + 1);
    std::vector<T> acc(static_cast<size_t>(channels));  // (C)
    for (int64_t v = v0; v < v1; ++v) {
      if (start[v] == start[v + 1]) continue;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t k = start[v]; k < start[v + 1]; ++k) {
        const T* d = dout + order[k] * channels;  // (C)
        for (int64_t c = 0; c < channels; ++c) acc[c] += d[c];
      }
      T* row = dtable + v * channels;  // (C)
      for (int64_t c = 0; c < channels; ++c) row[c] += acc[c];
    }
  });
}

}  // namespace

template <typename T>
void embedding_forward_cpu(T* out, const int32_t* tokens, const T* wte, const T* wpe, int64_t batch, int64_t seq,
                           int64_t channels, int64_t vocab) {
  KILN_CHECK(batch >= 0 && seq >= 0, "embedding_forward_cpu: bad shape (" << batch << ", " << seq << ")");
  check_shape(batch * seq, channels, vocab, "embedding_forward_cpu");
  check_ids(tokens, batch * seq, vocab, "embedding_forward_cpu");
  parallel_for(batch * seq, std::max<int64_t>(1, kPerPart / std::max<int64_t>(channels, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t t = row % seq;
      const T* e = wte + static_cast<int64_t>(tokens[row]) * channels;  // (C)
      const T* p = wpe + t * channels;                                  // (C)
      T* o = out + row * channels;                                      // (C)
      for (int64_t c = 0; c < channels; ++c) o[c] = e[c] + p[c];
    }
  });
}

template <typename T>
void embedding_backward_cpu(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int64_t batch, int64_t seq,
                            int64_t channels, int64_t vocab) {
  KILN_CHECK(batch >= 0 && seq >= 0, "embedding_backward_cpu: bad shape (" << batch << ", " << seq << ")");
  check_shape(batch * seq, channels, vocab, "embedding_backward_cpu");
  check_ids(tokens, batch * seq, vocab, "embedding_backward_cpu");
  scatter_rows(dwte, dout, tokens, batch * seq, channels, vocab);
  if (dwpe == nullptr || batch == 0) return;
  parallel_for(seq, std::max<int64_t>(1, kPerPart / std::max<int64_t>(batch * channels, 1)), [&](int64_t t0, int64_t t1) {
    std::vector<T> acc(static_cast<size_t>(channels));  // (C)
    for (int64_t t = t0; t < t1; ++t) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t b = 0; b < batch; ++b) {
        const T* d = dout + (b * seq + t) * channels;  // (C)
        for (int64_t c = 0; c < channels; ++c) acc[c] += d[c];
      }
      T* row = dwpe + t * channels;
      for (int64_t c = 0; c < channels; ++c) row[c] += acc[c];
    }
  });
}

template <typename T>
void embedding_lookup_forward_cpu(T* out, const int32_t* ids, const T* table, int64_t n, int64_t channels,
                                  int64_t vocab) {
  check_shape(n, channels, vocab, "embedding_lookup_forward_cpu");
  check_ids(ids, n, vocab, "embedding_lookup_forward_cpu");
  parallel_for(n, std::max<int64_t>(1, kPerPart / std::max<int64_t>(channels, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* e = table + static_cast<int64_t>(ids[i]) * channels;
      std::copy(e, e + channels, out + i * channels);
    }
  });
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
