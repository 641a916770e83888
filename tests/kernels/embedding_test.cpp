// Embeddings: CPU references against hand-computed values and finite
// differences, bad ids rejected without touching outputs; CUDA forward vs
// CPU in fp32 and bf16, backward bit-identical to the CPU reference (same
// summation order), deterministic, and out-of-range ids reported.
#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "runtime/philox.h"
#include "tests/harness/gradcheck.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;
using test::random_uniform_f64;

// Token ids in [0, vocab), drawn so that small vocabularies repeat a lot.
std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = static_cast<int32_t>(philox_uniform(seed, 0, i) * static_cast<float>(vocab)) % vocab;
  return t;
}

TEST(EmbeddingCpu, ForwardHandComputed) {
  // B = 1, T = 2, C = 2, V = 3.
  const std::vector<float> wte = {1, 2, 3, 4, 5, 6}, wpe = {10, 20, 30, 40};
  const std::vector<int32_t> tok = {2, 0};
  std::vector<float> out(4);
  embedding_forward_cpu(out.data(), tok.data(), wte.data(), wpe.data(), 1, 2, 2, 3);
  EXPECT_EQ(out, (std::vector<float>{15, 26, 31, 42}));
  std::vector<float> look(4);
  embedding_lookup_forward_cpu(look.data(), tok.data(), wte.data(), 2, 2, 3);
  EXPECT_EQ(look, (std::vector<float>{5, 6, 1, 2}));
}

TEST(EmbeddingCpu, BackwardHandComputedAndAccumulates) {
  // B = 2, T = 2, C = 1, V = 3; token 1 appears three times.
  const std::vector<int32_t> tok = {1, 1, 0, 1};
  const std::vector<float> dout = {1, 2, 4, 8};
  std::vector<float> dwte = {100, 200, 300}, dwpe = {1000, 2000};
  embedding_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tok.data(), 2, 2, 1, 3);
  EXPECT_EQ(dwte, (std::vector<float>{104, 211, 300}));
  EXPECT_EQ(dwpe, (std::vector<float>{1005, 2010}));
  // dwpe == nullptr: only dwte moves.
  embedding_backward_cpu(dwte.data(), static_cast<float*>(nullptr), dout.data(), tok.data(), 2, 2, 1, 3);
  EXPECT_EQ(dwte, (std::vector<float>{108, 222, 300}));
}

TEST(EmbeddingCpu, BackwardMatchesFiniteDifferences) {
  const int64_t B = 3, T = 5, C = 4, V = 7;
  const std::vector<int32_t> tok = random_tokens(B * T, V, 1);
  const std::vector<double> wte = random_uniform_f64(V * C, 2), wpe = random_uniform_f64(T * C, 3);
  const std::vector<double> w = random_uniform_f64(B * T * C, 4);
  std::vector<double> dwte(V * C, 0.0), dwpe(T * C, 0.0);
  embedding_backward_cpu(dwte.data(), dwpe.data(), w.data(), tok.data(), B, T, C, V);
  auto loss = [&](const std::vector<double>& e, const std::vector<double>& p) {
    std::vector<double> out(B * T * C);
    embedding_forward_cpu(out.data(), tok.data(), e.data(), p.data(), B, T, C, V);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
    return l;
  };
  EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& e) { return loss(e, wpe); }, wte, dwte, "dwte"));
  EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& p) { return loss(wte, p); }, wpe, dwpe, "dwpe"));
  std::vector<double> dtab(V * C, 0.0);
  embedding_lookup_backward_cpu(dtab.data(), w.data(), tok.data(), B * T, C, V);
  auto lookup_loss = [&](const std::vector<double>& e) {
    std::vector<double> out(B * T * C);
    embedding_lookup_forward_cpu(out.data(), tok.data(), e.data(), B * T, C, V);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
    return l;
  };
  EXPECT_TRUE(test::check_gradient(lookup_loss, wte, dtab, "lookup dtable"));
}

TEST(EmbeddingCpu, OutOfRangeIdThrowsNamingItAndWritesNothing) {
  const std::vector<float> wte(3 * 2, 1.0f), wpe(2 * 2, 1.0f), dout(4, 1.0f);
  for (int32_t bad : {3, -1, 1 << 30}) {
    const std::vector<int32_t> tok = {0, bad};
    std::vector<float> out(4, -5.0f), dwte(6, 0.0f), dwpe(4, 0.0f);
    try {
      embedding_forward_cpu(out.data(), tok.data(), wte.data(), wpe.data(), 1, 2, 2, 3);
      ADD_FAILURE() << "id " << bad << " was accepted";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("token id " + std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("position 1"), std::string::npos) << msg;
    }
    EXPECT_EQ(out, std::vector<float>(4, -5.0f)) << "forward wrote output before rejecting id " << bad;
    EXPECT_THROW(embedding_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tok.data(), 1, 2, 2, 3), InputError);
    EXPECT_EQ(dwte, std::vector<float>(6, 0.0f)) << "backward touched dwte before rejecting id " << bad;
    EXPECT_EQ(dwpe, std::vector<float>(4, 0.0f));
    EXPECT_THROW(embedding_lookup_forward_cpu(out.data(), tok.data(), wte.data(), 2, 2, 3), InputError);
  }
}

TEST(EmbeddingCpu, EmptyShapes) {
  std::vector<float> dwte(6, 1.0f);
  embedding_backward_cpu(dwte.data(), static_cast<float*>(nullptr), static_cast<const float*>(nullptr),
                         static_cast<const int32_t*>(nullptr), 0, 4, 2, 3);
  EXPECT_EQ(dwte, std::vector<float>(6, 1.0f));
}

#if KILN_WITH_CUDA
struct Shape {
  int64_t B, T, C, V;
};
std::string shape_str(const Shape& s) {
  return "(B " + std::to_string(s.B) + ", T " + std::to_string(s.T) + ", C " + std::to_string(s.C) + ", V " +
         std::to_string(s.V) + ")";
}
// C odd (scalar path), multiple of 4 but not 8 (vector for fp32 only), GPT
// widths; V from 1 (every token the same) to GPT-2's padded vocabulary.
const std::vector<Shape>& gpu_shapes() {
  static const std::vector<Shape> s = {{1, 1, 1, 1},   {2, 3, 5, 1},     {3, 7, 33, 4},    {4, 31, 12, 50},
                                       {2, 33, 768, 97}, {1, 509, 64, 3}, {8, 128, 768, 50304},
                                       {4, 1024, 31, 509}, {0, 5, 8, 10}};
  return s;
}

template <typename H>
void check_forward(const Shape& s, size_t offset) {
  const int64_t n = s.B * s.T;
  const std::vector<int32_t> tok = random_tokens(n, s.V, 10 + n);
  const std::vector<float> wte = test::representable<H>(random_uniform(s.V * s.C, 11));
  const std::vector<float> wpe = test::representable<H>(random_uniform(s.T * s.C, 12));
  std::vector<float> want(n * s.C), want_lookup(n * s.C);
  embedding_forward_cpu(want.data(), tok.data(), wte.data(), wpe.data(), s.B, s.T, s.C, s.V);
  embedding_lookup_forward_cpu(want_lookup.data(), tok.data(), wte.data(), n, s.C, s.V);
  test::DeviceBuffer<int32_t> dtok(tok), status(1);
  test::OffsetBuffer<H> dwte(test::to_storage<H>(wte), offset), dwpe(test::to_storage<H>(wpe), offset);
  test::OffsetBuffer<H> dout(n * s.C, offset);
  embedding_status_reset(status.get(), nullptr);
  embedding_forward(dout.get(), dtok.get(), dwte.get(), dwpe.get(), s.B, s.T, s.C, s.V, status.get(), nullptr);
  const std::string what = "embedding_forward " + test::storage_name<H>() + " " + shape_str(s) + " offset " +
                           std::to_string(offset);
  EXPECT_TRUE(all_close(test::to_f32(dout.to_host()), test::representable<H>(want), test::storage_tolerance<H>(), what));
  EXPECT_NO_THROW(embedding_check_status(status.get(), dtok.get(), s.V, nullptr)) << what;
  dout.poison();
  embedding_lookup_forward(dout.get(), dtok.get(), dwte.get(), n, s.C, s.V, status.get(), nullptr);
  // A lookup copies stored values: exact.
  EXPECT_TRUE(all_close(test::to_f32(dout.to_host()), want_lookup, {0, 0}, "lookup " + what));
}

// tokens: the ids to use, or random ones when empty.
template <typename H>
void check_backward(const Shape& s, std::vector<int32_t> tok = {}) {
  const int64_t n = s.B * s.T;
  if (tok.empty()) tok = random_tokens(n, s.V, 20 + n);
  const std::vector<float> dout = test::representable<H>(random_uniform(n * s.C, 21));
  const std::vector<float> dwte0 = random_uniform(s.V * s.C, 22), dwpe0 = random_uniform(s.T * s.C, 23);
  std::vector<float> want_wte = dwte0, want_wpe = dwpe0;
  embedding_backward_cpu(want_wte.data(), want_wpe.data(), dout.data(), tok.data(), s.B, s.T, s.C, s.V);
  test::DeviceBuffer<int32_t> dtok(tok), status(1);
  test::DeviceBuffer<H> ddout(test::to_storage<H>(dout));
  test::DeviceBuffer<float> dwte(dwte0), dwpe(dwpe0);
  const size_t ws_bytes = embedding_backward_workspace_bytes(n, s.V);
  test::DeviceBuffer<uint8_t> ws(ws_bytes);
  embedding_status_reset(status.get(), nullptr);
  embedding_backward(dwte.get(), dwpe.get(), ddout.get(), dtok.get(), s.B, s.T, s.C, s.V, ws.get(), ws_bytes,
                     status.get(), nullptr);
  const std::string what = "embedding_backward " + test::storage_name<H>() + " " + shape_str(s);
  const std::vector<float> got_wte = dwte.to_host(), got_wpe = dwpe.to_host();
  // Same order of fp32 additions as the CPU reference: bit for bit.
  EXPECT_TRUE(test::bitwise_equal(got_wte, want_wte, what + " dwte"));
  EXPECT_TRUE(test::bitwise_equal(got_wpe, want_wpe, what + " dwpe"));
  EXPECT_NO_THROW(embedding_check_status(status.get(), dtok.get(), s.V, nullptr)) << what;
  // Determinism: a second run from the same start.
  dwte.upload(dwte0);
  dwpe.upload(dwpe0);
  embedding_backward(dwte.get(), dwpe.get(), ddout.get(), dtok.get(), s.B, s.T, s.C, s.V, ws.get(), ws_bytes,
                     status.get(), nullptr);
  EXPECT_TRUE(test::bitwise_equal(dwte.to_host(), got_wte, what + " rerun dwte"));
  EXPECT_TRUE(test::bitwise_equal(dwpe.to_host(), got_wpe, what + " rerun dwpe"));
  // The lookup backward is the dwte half.
  dwte.upload(dwte0);
  embedding_lookup_backward(dwte.get(), ddout.get(), dtok.get(), n, s.C, s.V, ws.get(), ws_bytes, status.get(),
                            nullptr);
  EXPECT_TRUE(test::bitwise_equal(dwte.to_host(), want_wte, what + " lookup dtable"));
}
#endif

TEST(EmbeddingGpu, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (const Shape& s : gpu_shapes()) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      check_forward<float>(s, offset);
      check_forward<bf16>(s, offset);
    }
  }
#endif
}

TEST(EmbeddingGpu, BackwardMatchesCpuBitForBitAndIsDeterministic) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (const Shape& s : gpu_shapes()) {
    check_backward<float>(s);
    check_backward<bf16>(s);
  }
#endif
}

TEST(EmbeddingGpu, OneTokenEverywhere) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  // Every position holds the same id: one run of 8192 positions.
  const Shape s{8, 1024, 96, 50304};
  check_backward<float>(s, std::vector<int32_t>(s.B * s.T, 50256));
  check_backward<bf16>(s, std::vector<int32_t>(s.B * s.T, 0));
#endif
}

TEST(EmbeddingGpu, OutOfRangeIdsAreReportedAndNeverRead) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  const int64_t B = 2, T = 4, C = 8, V = 5;
  std::vector<int32_t> tok = {0, 1, 2, 3, 4, 0, 1, 2};
  tok[6] = 7;    // too large
  tok[3] = -2;   // negative: the smallest bad position is 3
  const std::vector<float> wte = random_uniform(V * C, 1), wpe = random_uniform(T * C, 2);
  test::DeviceBuffer<int32_t> dtok(tok), status(1);
  test::DeviceBuffer<float> dwte(wte), dwpe(wpe), dout(B * T * C);
  embedding_status_reset(status.get(), nullptr);
  embedding_forward(dout.get(), dtok.get(), dwte.get(), dwpe.get(), B, T, C, V, status.get(), nullptr);
  EXPECT_EQ(status.to_host()[0], 3);
  try {
    embedding_check_status(status.get(), dtok.get(), V, nullptr, "test batch");
    ADD_FAILURE() << "bad ids were not reported";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("test batch"), std::string::npos) << msg;
    EXPECT_NE(msg.find("token id -2 at position 3"), std::string::npos) << msg;
  }
  // Bad rows are zero; good rows are right.
  const std::vector<float> out = dout.to_host();
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(out[3 * C + c], 0.0f);
    EXPECT_EQ(out[6 * C + c], 0.0f);
    EXPECT_EQ(out[1 * C + c], wte[1 * C + c] + wpe[1 * C + c]);
  }
  // Backward skips the bad positions: equal to the CPU reference on the
  // good positions only (bad rows' dout zeroed, their ids replaced by 0).
  const std::vector<float> g = random_uniform(B * T * C, 3);
  std::vector<float> g_clean = g;
  std::vector<int32_t> tok_clean = tok;
  for (int64_t i : {3, 6}) {
    tok_clean[i] = 0;
    for (int64_t c = 0; c < C; ++c) g_clean[i * C + c] = 0.0f;
  }
  std::vector<float> want_wte(V * C, 0.0f);
  embedding_lookup_backward_cpu(want_wte.data(), g_clean.data(), tok_clean.data(), B * T, C, V);
  test::DeviceBuffer<float> dg(g), gwte(std::vector<float>(V * C, 0.0f));
  const size_t ws_bytes = embedding_backward_workspace_bytes(B * T, V);
  test::DeviceBuffer<uint8_t> ws(ws_bytes);
  embedding_status_reset(status.get(), nullptr);
  embedding_lookup_backward(gwte.get(), dg.get(), dtok.get(), B * T, C, V, ws.get(), ws_bytes, status.get(),
                            nullptr);
  EXPECT_EQ(status.to_host()[0], 3);
  // Adding a zero row can change nothing, but the order of the remaining
  // terms is the same: compare within fp32 rounding.
  EXPECT_TRUE(all_close(gwte.to_host(), want_wte, {1e-6, 1e-7}, "backward with bad ids"));
#endif
}

TEST(EmbeddingGpu, RejectsTooSmallWorkspace) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  const std::vector<int32_t> tok = {0, 1};
  test::DeviceBuffer<int32_t> dtok(tok);
  test::DeviceBuffer<float> dout(2 * 4), dwte(2 * 4);
  test::DeviceBuffer<uint8_t> ws(16);
  EXPECT_THROW(embedding_lookup_backward(dwte.get(), dout.get(), dtok.get(), 2, 4, 2, ws.get(), 16, nullptr, nullptr),
               Error);
#endif
}

// --- CPU threads --------------------------------------------------------------

template <typename T>
void check_embedding_thread_counts() {
  // Skewed ids (many repeats of a few rows, as in text) so the backward's
  // vocabulary split falls inside runs of equal ids.
  const int64_t B = 7, S = 129, C = 67, V = 501;
  std::vector<int32_t> ids(B * S);
  for (int64_t i = 0; i < B * S; ++i) ids[i] = static_cast<int32_t>(i % 5 == 0 ? 3 : (i * i * 31) % V);
  const std::vector<float> wf = random_uniform(V * C, 71), pf = random_uniform(S * C, 72), df = random_uniform(B * S * C, 73);
  const std::vector<T> wte(wf.begin(), wf.end()), wpe(pf.begin(), pf.end()), dout(df.begin(), df.end());
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out(2 * B * S * C + 2 * V * C + S * C, T(0.5));
    T* p = out.data();
    embedding_forward_cpu(p, ids.data(), wte.data(), wpe.data(), B, S, C, V);
    embedding_lookup_forward_cpu(p + B * S * C, ids.data(), wte.data(), B * S, C, V);
    p += 2 * B * S * C;
    embedding_backward_cpu(p, p + V * C, dout.data(), ids.data(), B, S, C, V);
    embedding_lookup_backward_cpu(p + V * C + S * C, dout.data(), ids.data(), B * S, C, V);
    return out;
  }, "embedding"));
}

TEST(EmbeddingCpu, ResultsDoNotDependOnTheThreadCount) {
  check_embedding_thread_counts<float>();
  check_embedding_thread_counts<double>();
}

}  // namespace
}  // namespace kiln
