// IDX reading (gzip and raw), its errors, ImageDataset (normalization, fill,
// split) and the real Fashion-MNIST when installed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/idx.h"
#include "data/image_dataset.h"
#include "runtime/error.h"

namespace fs = std::filesystem;
using kiln::IdxArray;
using kiln::IdxType;
using kiln::ImageDataset;
using kiln::InputError;

namespace {

const fs::path& tmp_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("kiln_idx_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

struct Cleanup {
  ~Cleanup() {
    std::error_code ec;
    fs::remove_all(tmp_dir(), ec);
  }
} cleanup;

std::string tmp(const std::string& name) { return (tmp_dir() / name).string(); }

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

/// A raw IDX file built by hand (big-endian header), independent of write_idx.
std::vector<uint8_t> idx_bytes(uint8_t type, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

/// n images of rows x cols with pixel (i, k) = (i * 7 + k) % 256 and label i % classes.
void write_image_pair(const std::string& stem, int n, int rows, int cols, int classes, bool gzip, int n_labels = -1) {
  IdxArray img;
  img.type = IdxType::u8;
  img.dims = {n, rows, cols};
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < rows * cols; ++k) img.bytes.push_back(static_cast<uint8_t>((i * 7 + k) % 256));
  IdxArray lab;
  lab.type = IdxType::u8;
  if (n_labels < 0) n_labels = n;
  lab.dims = {n_labels};
  for (int i = 0; i < n_labels; ++i) lab.bytes.push_back(static_cast<uint8_t>(i % classes));
  const std::string ext = gzip ? ".gz" : "";
  kiln::write_idx(tmp(stem + "-images-idx3-ubyte" + ext), img, gzip);
  kiln::write_idx(tmp(stem + "-labels-idx1-ubyte" + ext), lab, gzip);
}

/// The InputError message from `fn`, failing the test on anything else.
template <class Fn>
std::string input_error(Fn fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected kiln::InputError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected kiln::InputError, nothing was thrown";
  return "";
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "no '" << (part) << "' in: " << (msg)

}  // namespace

TEST(IdxTest, ReadsHandWrittenRawFile) {
  const std::string path = tmp("hand-u8");
  write_bytes(path, idx_bytes(0x08, {2, 3}, {1, 2, 3, 4, 5, 255}));
  const IdxArray a = kiln::read_idx(path);
  EXPECT_EQ(a.type, IdxType::u8);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.count(), 6);
  EXPECT_EQ(a.bytes, (std::vector<uint8_t>{1, 2, 3, 4, 5, 255}));
}

TEST(IdxTest, MultiByteElementsAreBigEndianOnDisk) {
  // i32 {1, -2} and f32 {1.5} written big-endian by hand.
  write_bytes(tmp("hand-i32"), idx_bytes(0x0C, {2}, {0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE}));
  const IdxArray a = kiln::read_idx(tmp("hand-i32"));
  ASSERT_EQ(a.count(), 2);
  EXPECT_EQ(a.as<int32_t>()[0], 1);
  EXPECT_EQ(a.as<int32_t>()[1], -2);
  write_bytes(tmp("hand-f32"), idx_bytes(0x0D, {1, 1}, {0x3F, 0xC0, 0, 0}));
  EXPECT_EQ(kiln::read_idx(tmp("hand-f32")).as<float>()[0], 1.5f);
  // write_idx produces the same bytes.
  IdxArray w;
  w.type = IdxType::i32;
  w.dims = {2};
  const int32_t v[2] = {1, -2};
  w.bytes.resize(8);
  std::memcpy(w.bytes.data(), v, 8);
  kiln::write_idx(tmp("w-i32"), w, false);
  EXPECT_EQ(read_bytes(tmp("w-i32")), read_bytes(tmp("hand-i32")));
}

TEST(IdxTest, GzipAndRawRoundTrip) {
  IdxArray a;
  a.type = IdxType::u8;
  a.dims = {5, 4, 3};
  for (int i = 0; i < 60; ++i) a.bytes.push_back(static_cast<uint8_t>(i * 37));
  for (bool gz : {false, true}) {
    const std::string path = tmp(gz ? "rt.gz" : "rt");
    kiln::write_idx(path, a, gz);
    const auto head = read_bytes(path);
    ASSERT_GE(head.size(), 2u);
    EXPECT_EQ(head[0] == 0x1f && head[1] == 0x8b, gz) << "gzip magic";
    const IdxArray b = kiln::read_idx(path);
    EXPECT_EQ(b.dims, a.dims);
    EXPECT_EQ(b.bytes, a.bytes);
  }
  // An empty array is legal.
  IdxArray e;
  e.type = IdxType::u8;
  e.dims = {0, 28, 28};
  kiln::write_idx(tmp("empty.gz"), e, true);
  EXPECT_EQ(kiln::read_idx(tmp("empty.gz")).count(), 0);
}

TEST(IdxTest, BadFilesAreInputErrorsNamingTheFile) {
  struct Case {
    const char* name;
    std::vector<uint8_t> bytes;
    std::vector<std::string> expect;
  };
  const std::vector<uint8_t> good = idx_bytes(0x08, {3, 2, 2}, std::vector<uint8_t>(12, 9));
  std::vector<uint8_t> truncated(good.begin(), good.end() - 5);
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  const std::vector<Case> cases = {
      {"bad-magic", {0x1f, 0x00, 0x08, 0x01, 0, 0, 0, 0}, {"not an IDX file", "magic bytes 1f 00 08 01"}},
      {"png-magic", {0x89, 'P', 'N', 'G', 0, 0, 0, 0}, {"not an IDX file"}},
      {"bad-type", idx_bytes(0x07, {1}, {0}), {"unknown IDX element type code 07"}},
      {"zero-dims", {0, 0, 0x08, 0}, {"0 dimensions (expected 1 to 8)"}},
      {"nine-dims", {0, 0, 0x08, 9}, {"9 dimensions (expected 1 to 8)"}},
      {"tiny", {0, 0}, {"too short for an IDX header (2 bytes"}},
      {"empty-file", {}, {"too short for an IDX header (0 bytes"}},
      {"short-header", {0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0}, {"truncated IDX header", "need 16 header bytes"}},
      {"truncated", truncated, {"truncated", "header promises 3 x 2 x 2 u8 elements = 12 data bytes, file has 7"}},
      {"trailing", longer, {"longer than its header says", "12 data bytes, file has 13"}},
      {"huge-dims", idx_bytes(0x0E, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {}), {"truncated", "more than 2^62"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = tmp(c.name);
    write_bytes(path, c.bytes);
    const std::string msg = input_error([&] { kiln::read_idx(path); });
    EXPECT_HAS(msg, path);
    for (const auto& e : c.expect) EXPECT_HAS(msg, e);
  }
}

TEST(IdxTest, TruncatedGzipIsAnInputError) {
  IdxArray a;
  a.type = IdxType::u8;
  a.dims = {1000};
  for (int i = 0; i < 1000; ++i) a.bytes.push_back(static_cast<uint8_t>(i * 131 + (i >> 3)));
  kiln::write_idx(tmp("full.gz"), a, true);
  const auto gz = read_bytes(tmp("full.gz"));
  for (size_t keep : {gz.size() - 4, gz.size() / 2, size_t{12}}) {
    SCOPED_TRACE(keep);
    const std::string path = tmp("cut.gz");
    write_bytes(path, std::vector<uint8_t>(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(keep)));
    const std::string msg = input_error([&] { kiln::read_idx(path); });
    EXPECT_HAS(msg, path);
    EXPECT_HAS(msg, "truncated");
  }
}

TEST(IdxTest, MissingFileAndDirectoryAreInputErrors) {
  const std::string missing = tmp("does-not-exist");
  EXPECT_HAS(input_error([&] { kiln::read_idx(missing); }), missing);
  EXPECT_HAS(input_error([&] { kiln::read_idx(tmp_dir().string()); }), "is a directory");
}

TEST(ImageDatasetTest, LoadsPairsAndChecksThem) {
  for (bool gz : {false, true}) {
    SCOPED_TRACE(gz);
    const std::string stem = gz ? "gz/train" : "raw/train";
    fs::create_directories(tmp_dir() / (gz ? "gz" : "raw"));
    write_image_pair(stem, 13, 4, 3, 10, gz);
    const ImageDataset d = ImageDataset::from_mnist_dir(tmp(gz ? "gz" : "raw"), "train");
    EXPECT_EQ(d.size(), 13);
    EXPECT_EQ(d.rows(), 4);
    EXPECT_EQ(d.cols(), 3);
    EXPECT_EQ(d.sample_size(), 12);
    EXPECT_EQ(d.num_classes(), 10);
    EXPECT_EQ(d.label(12), 2);
    EXPECT_EQ(d.image(2)[5], (2 * 7 + 5) % 256);
  }
  // Count mismatch: names both files and the counts.
  fs::create_directories(tmp_dir() / "mismatch");
  write_image_pair("mismatch/train", 10, 2, 2, 3, true, 9);
  const std::string msg = input_error([&] { ImageDataset::from_mnist_dir(tmp("mismatch"), "train"); });
  EXPECT_HAS(msg, "mismatch/train-labels-idx1-ubyte.gz: has 9 labels but");
  EXPECT_HAS(msg, "mismatch/train-images-idx3-ubyte.gz has 10 images");
  // Labels file where the images should be.
  const std::string lab = tmp("mismatch/train-labels-idx1-ubyte.gz");
  const std::string swapped = input_error([&] { ImageDataset::from_idx(lab, lab); });
  EXPECT_HAS(swapped, lab + ": expected an IDX image file of u8 with 3 dimensions");
  // Missing files name the directory and what was looked for.
  const std::string none = input_error([&] { ImageDataset::from_mnist_dir(tmp("mismatch"), "test"); });
  EXPECT_HAS(none, tmp("mismatch"));
  EXPECT_HAS(none, "t10k-images-idx3-ubyte(.gz)");
  EXPECT_HAS(input_error([&] { ImageDataset::from_mnist_dir(tmp("nowhere"), "train"); }), "nowhere: not a directory");
}

TEST(ImageDatasetTest, FillNormalizesAndLabels) {
  // Two 2x2 images: pixels {0, 51, 102, 255} and {255, 0, 0, 0}.
  ImageDataset d = ImageDataset::from_memory(2, 2, {0, 51, 102, 255, 255, 0, 0, 0}, {3, 7});
  EXPECT_EQ(d.num_classes(), 8);
  float x[8];
  int32_t y[2];
  const int64_t idx[2] = {1, 0};
  d.set_normalization(kiln::Normalization::none());
  d.fill(idx, 2, x, y);
  EXPECT_EQ(y[0], 7);
  EXPECT_EQ(y[1], 3);
  EXPECT_FLOAT_EQ(x[0], 1.0f);
  EXPECT_FLOAT_EQ(x[1], 0.0f);
  EXPECT_FLOAT_EQ(x[5], 0.2f);
  EXPECT_FLOAT_EQ(x[6], 0.4f);
  d.set_normalization({true, 0.5f, 0.25f});
  d.fill(idx, 2, x, nullptr);
  EXPECT_FLOAT_EQ(x[0], 2.0f);    // (1 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[1], -2.0f);   // (0 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[6], -0.4f);   // (0.4 - 0.5) / 0.25
  // Default is Fashion-MNIST's statistics.
  const ImageDataset f = ImageDataset::from_memory(1, 1, {0}, {0});
  f.fill(idx + 1, 1, x, nullptr);
  EXPECT_FLOAT_EQ(x[0], -0.2860f / 0.3530f);
  // Out-of-range index is a kiln::Error, not a silent read.
  const int64_t bad = 2;
  EXPECT_THROW(d.fill(&bad, 1, x, y), kiln::Error);
}

TEST(ImageDatasetTest, SplitIsSeededDisjointAndComplete) {
  std::vector<uint8_t> pix(100);
  std::vector<int32_t> lab(100);
  for (int i = 0; i < 100; ++i) pix[i] = static_cast<uint8_t>(i), lab[i] = i % 10;
  const ImageDataset d = ImageDataset::from_memory(1, 1, pix, lab);
  auto [tr, va] = kiln::split_train_val(d, 0.15, 7);
  EXPECT_EQ(tr.size(), 85);
  EXPECT_EQ(va.size(), 15);
  std::set<int> seen;
  for (const ImageDataset* v : {&tr, &va})
    for (int64_t i = 0; i < v->size(); ++i) {
      EXPECT_TRUE(seen.insert(v->image(i)[0]).second) << "image in both splits";
      EXPECT_EQ(v->label(i), v->image(i)[0] % 10);
    }
  EXPECT_EQ(seen.size(), 100u);
  // Same seed, same split; another seed, another split.
  auto [tr2, va2] = kiln::split_train_val(d, 0.15, 7);
  auto [tr3, va3] = kiln::split_train_val(d, 0.15, 8);
  std::vector<int> a, b, c;
  for (int64_t i = 0; i < 15; ++i) a.push_back(va.image(i)[0]), b.push_back(va2.image(i)[0]), c.push_back(va3.image(i)[0]);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // A split of a view: indices stay relative to the view.
  auto [tr4, va4] = kiln::split_train_val(tr, 0.2, 1);
  EXPECT_EQ(tr4.size() + va4.size(), 85);
  EXPECT_EQ(va4.size(), 17);
  // No validation: an empty view that keeps the image geometry.
  auto [all, none] = kiln::split_train_val(d, 0.0, 1);
  EXPECT_EQ(all.size(), 100);
  EXPECT_EQ(none.size(), 0);
  EXPECT_EQ(none.sample_size(), 1);
}

TEST(ImageDatasetTest, RealFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << dir << " not installed (Debian package dataset-fashion-mnist)";
  const ImageDataset train = ImageDataset::from_mnist_dir(dir, "train");
  const ImageDataset test = ImageDataset::from_mnist_dir(dir, "test");
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.rows(), 28);
  EXPECT_EQ(train.cols(), 28);
  EXPECT_EQ(train.num_classes(), 10);
  EXPECT_EQ(test.num_classes(), 10);
  // Fashion-MNIST is balanced: 6000 / 1000 images per class.
  EXPECT_EQ(train.label_histogram(), std::vector<int64_t>(10, 6000));
  EXPECT_EQ(test.label_histogram(), std::vector<int64_t>(10, 1000));
  // Pixel statistics match the normalization defaults.
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < train.size(); ++i) {
    const uint8_t* p = train.image(i);
    for (int k = 0; k < 784; ++k) {
      const double v = p[k] / 255.0;
      sum += v;
      sq += v * v;
    }
  }
  const double n = 60000.0 * 784.0, mean = sum / n, std = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, kiln::Normalization::fashion_mnist().mean, 5e-4);
  EXPECT_NEAR(std, kiln::Normalization::fashion_mnist().std, 5e-4);
  // Normalized batches have about zero mean and unit variance.
  std::vector<int64_t> idx(1000);
  for (int i = 0; i < 1000; ++i) idx[i] = i * 60;
  std::vector<float> x(1000 * 784);
  std::vector<int32_t> y(1000);
  train.fill(idx.data(), 1000, x.data(), y.data());
  double s = 0;
  for (float v : x) s += v;
  EXPECT_NEAR(s / x.size(), 0.0, 0.05);
  for (int32_t l : y) EXPECT_TRUE(l >= 0 && l < 10);
}
