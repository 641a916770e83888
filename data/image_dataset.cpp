#include "data/image_dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "data/idx.h"
#include "data/sampler.h"
#include "runtime/error.h"

namespace kiln {

namespace {

std::string dims_text(const std::vector<int64_t>& d) {
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) s += (i ? " x " : "") + std::to_string(d[i]);
  return s;
}

/// `base` or `base.gz`, whichever exists ("" if neither).
std::string find_variant(const std::filesystem::path& dir, const std::string& base) {
  std::error_code ec;
  for (const std::string& name : {base + ".gz", base}) {
    const auto p = dir / name;
    if (std::filesystem::is_regular_file(p, ec)) return p.string();
  }
  return "";
}

// Stream for the train/val split permutation, apart from the sampler's
// per-epoch streams (which count up from 0).
constexpr uint64_t kSplitStream = (uint64_t{1} << 24) - 1;

}  // namespace

ImageDataset ImageDataset::from_store(std::shared_ptr<Store> s) {
  ImageDataset d;
  int32_t max_label = -1;
  for (int32_t l : s->labels) max_label = std::max(max_label, l);
  s->num_classes = max_label + 1;
  d.store_ = std::move(s);
  d.build_lut();
  return d;
}

ImageDataset ImageDataset::from_idx(const std::string& images_path, const std::string& labels_path) {
  IdxArray img = read_idx(images_path);
  if (img.type != IdxType::u8 || img.dims.size() != 3)
    throw InputError(images_path + ": expected an IDX image file of u8 with 3 dimensions (count x rows x cols), got " +
                     idx_type_name(img.type) + " with dimensions " + dims_text(img.dims));
  const IdxArray lab = read_idx(labels_path);
  if (lab.type != IdxType::u8 || lab.dims.size() != 1)
    throw InputError(labels_path + ": expected an IDX label file of u8 with 1 dimension (count), got " +
                     idx_type_name(lab.type) + " with dimensions " + dims_text(lab.dims));
  if (lab.dims[0] != img.dims[0])
    throw InputError(labels_path + ": has " + std::to_string(lab.dims[0]) + " labels but " + images_path + " has " +
                     std::to_string(img.dims[0]) + " images; expected one label per image");
  if (img.dims[1] < 1 || img.dims[2] < 1)
    throw InputError(images_path + ": images of " + std::to_string(img.dims[1]) + " x " +
                     std::to_string(img.dims[2]) + " pixels; expected at least 1 x 1");
  auto s = std::make_shared<Store>();
  s->n = img.dims[0];
  s->rows = img.dims[1];
  s->cols = img.dims[2];
  s->pixels = std::move(img.bytes);
  s->labels.assign(lab.bytes.begin(), lab.bytes.end());
  s->source = images_path;
  return from_store(std::move(s));
}

ImageDataset ImageDataset::from_mnist_dir(const std::string& dir, const std::string& split) {
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test") prefix = "t10k";
  else throw Error("from_mnist_dir: split must be \"train\" or \"test\", got \"" + split + "\"");
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw InputError(dir + ": not a directory (expected the MNIST-family IDX files there)");
  const std::string images_base = prefix + "-images-idx3-ubyte", labels_base = prefix + "-labels-idx1-ubyte";
  const std::string images = find_variant(dir, images_base), labels = find_variant(dir, labels_base);
  if (images.empty()) throw InputError(dir + ": no " + images_base + "(.gz) here");
  if (labels.empty()) throw InputError(dir + ": no " + labels_base + "(.gz) here");
  return from_idx(images, labels);
}

ImageDataset ImageDataset::from_memory(int64_t rows, int64_t cols, std::vector<uint8_t> pixels,
                                       std::vector<int32_t> labels, const std::string& name) {
  KILN_CHECK(rows >= 1 && cols >= 1, "from_memory: " << rows << " x " << cols << " images");
  KILN_CHECK(pixels.size() == labels.size() * static_cast<size_t>(rows * cols),
             "from_memory: " << pixels.size() << " pixels for " << labels.size() << " images of " << rows << " x "
                             << cols);
  for (int32_t l : labels) KILN_CHECK(l >= 0, "from_memory: negative label " << l);
  auto s = std::make_shared<Store>();
  s->n = static_cast<int64_t>(labels.size());
  s->rows = rows;
  s->cols = cols;
  s->pixels = std::move(pixels);
  s->labels = std::move(labels);
  s->source = name;
  return from_store(std::move(s));
}

int64_t ImageDataset::size() const {
  if (!store_) return 0;
  return whole_ ? store_->n : static_cast<int64_t>(indices_.size());
}
int64_t ImageDataset::rows() const { return store_ ? store_->rows : 0; }
int64_t ImageDataset::cols() const { return store_ ? store_->cols : 0; }
int ImageDataset::num_classes() const { return store_ ? store_->num_classes : 0; }
const std::string& ImageDataset::source() const {
  static const std::string none = "(empty)";
  return store_ ? store_->source : none;
}

const uint8_t* ImageDataset::image(int64_t i) const {
  KILN_CHECK(i >= 0 && i < size(), "ImageDataset::image(" << i << ") of " << size());
  return store_->pixels.data() + store_index(i) * sample_size();
}

int32_t ImageDataset::label(int64_t i) const {
  KILN_CHECK(i >= 0 && i < size(), "ImageDataset::label(" << i << ") of " << size());
  return store_->labels[static_cast<size_t>(store_index(i))];
}

std::vector<int64_t> ImageDataset::label_histogram() const {
  std::vector<int64_t> h(static_cast<size_t>(num_classes()), 0);
  for (int64_t i = 0; i < size(); ++i) ++h[static_cast<size_t>(label(i))];
  return h;
}

ImageDataset ImageDataset::subset(const std::vector<int64_t>& idx) const {
  std::vector<int64_t> store_idx;
  store_idx.reserve(idx.size());
  for (int64_t i : idx) {
    KILN_CHECK(i >= 0 && i < size(), "ImageDataset::subset: index " << i << " of " << size());
    store_idx.push_back(store_index(i));
  }
  ImageDataset d = *this;
  d.whole_ = false;
  d.indices_ = std::move(store_idx);
  return d;
}

void ImageDataset::set_normalization(const Normalization& n) {
  KILN_CHECK(!n.enabled || (n.std > 0 && std::isfinite(n.std) && std::isfinite(n.mean)),
             "normalization std " << n.std << ", mean " << n.mean);
  norm_ = n;
  build_lut();
}

void ImageDataset::build_lut() {
  // 256 entries: normalizing a batch is one table lookup per pixel.
  for (int p = 0; p < 256; ++p) {
    const float v = static_cast<float>(p) / 255.0f;
    lut_[p] = norm_.enabled ? (v - norm_.mean) / norm_.std : v;
  }
}

void ImageDataset::fill(const int64_t* idx, int64_t n, float* x, int32_t* y) const {
  const int64_t per = sample_size();
  for (int64_t b = 0; b < n; ++b) {
    const int64_t i = idx[b];
    KILN_CHECK(i >= 0 && i < size(), "ImageDataset::fill: index " << i << " of " << size());
    if (x) {
      const uint8_t* src = store_->pixels.data() + store_index(i) * per;
      float* dst = x + b * per;  // (b, 0, :, :)
      for (int64_t k = 0; k < per; ++k) dst[k] = lut_[src[k]];
    }
    if (y) y[b] = store_->labels[static_cast<size_t>(store_index(i))];
  }
}

std::pair<ImageDataset, ImageDataset> split_train_val(const ImageDataset& d, double val_fraction, uint64_t seed) {
  KILN_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "split_train_val: val_fraction " << val_fraction);
  const int64_t n = d.size();
  const int64_t n_val = static_cast<int64_t>(std::llround(val_fraction * static_cast<double>(n)));
  const std::vector<int64_t> perm = seeded_permutation(n, seed, kSplitStream);
  std::vector<int64_t> val(perm.begin(), perm.begin() + n_val);
  std::vector<int64_t> train(perm.begin() + n_val, perm.end());
  // Sorted: each view keeps the file's order (the sampler shuffles anyway).
  std::sort(val.begin(), val.end());
  std::sort(train.begin(), train.end());
  return {d.subset(train), d.subset(val)};
}

}  // namespace kiln
