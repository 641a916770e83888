// Labelled grayscale images in host memory (the MNIST family): uint8 pixels
// and int32 labels, read once from IDX files, turned into normalized floats
// batch by batch.
//
// A dataset is a view: a shared, immutable store of every image plus an
// optional list of the indices this view holds, so a train/val split copies
// no pixels.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

/// Pixel p (0..255) becomes (p / 255 - mean) / std when enabled, p / 255
/// otherwise.
struct Normalization {
  bool enabled = true;
  float mean = 0.2860f;  ///< Fashion-MNIST training-set mean of p / 255
  float std = 0.3530f;   ///< Fashion-MNIST training-set standard deviation of p / 255

  static Normalization fashion_mnist() { return {true, 0.2860f, 0.3530f}; }
  static Normalization mnist() { return {true, 0.1307f, 0.3081f}; }
  static Normalization none() { return {false, 0.0f, 1.0f}; }
};

class ImageDataset {
 public:
  ImageDataset() = default;

  /// An images file (u8, N x rows x cols) and a labels file (u8, N) in IDX
  /// format, gzip or raw. InputError naming the file for a bad file, and
  /// naming both when their counts differ.
  static ImageDataset from_idx(const std::string& images_path, const std::string& labels_path);

  /// An MNIST-family directory: split "train" reads train-images-idx3-ubyte
  /// and train-labels-idx1-ubyte, "test" the t10k-* files; each may end in
  /// .gz. InputError naming the directory and the file names looked for when
  /// they are missing.
  static ImageDataset from_mnist_dir(const std::string& dir, const std::string& split);

  /// From memory (tests): `pixels` holds n·rows·cols bytes, `labels` n values >= 0.
  static ImageDataset from_memory(int64_t rows, int64_t cols, std::vector<uint8_t> pixels,
                                  std::vector<int32_t> labels, const std::string& name = "memory");

  /// Images in this view.
  int64_t size() const;
  int64_t rows() const;
  int64_t cols() const;
  /// rows · cols: floats per sample in fill().
  int64_t sample_size() const { return rows() * cols(); }
  /// 1 + the largest label of the whole store (10 for the MNIST family).
  int num_classes() const;
  /// Where the images came from (for messages and logs).
  const std::string& source() const;

  /// Index into the underlying store of this view's i-th image.
  int64_t store_index(int64_t i) const { return whole_ ? i : indices_[static_cast<size_t>(i)]; }
  const uint8_t* image(int64_t i) const;  ///< rows · cols pixels
  int32_t label(int64_t i) const;
  /// Images per label over this view (length num_classes()).
  std::vector<int64_t> label_histogram() const;

  /// A view of images `idx` of this view (indices into this view).
  ImageDataset subset(const std::vector<int64_t>& idx) const;

  void set_normalization(const Normalization& n);
  const Normalization& normalization() const { return norm_; }

  /// Writes images `idx[0..n)` of this view as floats into `x`, (n, 1, rows,
  /// cols) — the same bytes as (n, rows·cols) — and their labels into `y`
  /// (n). Either pointer may be null to skip it. Indices are checked.
  void fill(const int64_t* idx, int64_t n, float* x, int32_t* y) const;

 private:
  struct Store {
    int64_t n = 0, rows = 0, cols = 0;
    int num_classes = 0;
    std::vector<uint8_t> pixels;  // (n, rows, cols)
    std::vector<int32_t> labels;  // (n)
    std::string source;
  };
  static ImageDataset from_store(std::shared_ptr<Store> s);
  void build_lut();

  std::shared_ptr<const Store> store_;
  bool whole_ = true;             // the whole store in order (indices_ unused)
  std::vector<int64_t> indices_;  // otherwise: store indices of this view
  Normalization norm_;
  float lut_[256] = {};
};

/// Splits `d` into (train, val) views: val gets round(val_fraction · size)
/// images chosen by a seeded permutation (the same on every platform), train
/// the rest; each keeps the dataset's order. The normalization is kept.
std::pair<ImageDataset, ImageDataset> split_train_val(const ImageDataset& d, double val_fraction, uint64_t seed);

}  // namespace kiln
