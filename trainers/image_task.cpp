#include "trainers/image_task.h"

#include <numeric>
#include <sstream>

#include "nn/mlp.h"
#include "runtime/process_info.h"
#include "trainers/trainer.h"

namespace kiln {

namespace {

Normalization normalization_for(const TrainConfig& c) {
  if (!c.data.normalize) return Normalization::none();
  return {true, static_cast<float>(c.data.mean), static_cast<float>(c.data.std)};
}

}  // namespace

ImageClassificationTask::ImageClassificationTask(const TrainConfig& cfg, Device device)
    : device_(device),
      compute_(cfg.precision == Precision::bf16 && device.is_cuda() ? DType::bf16 : DType::f32),
      rng_(std::make_shared<nn::RngStream>()) {
  rng_->seed = cfg.seed;
  const std::string& dir = cfg.data.path;
  ImageDataset full = ImageDataset::from_mnist_dir(dir, "train");
  std::tie(train_, val_) = split_train_val(full, cfg.data.val_fraction, cfg.seed);
  test_ = ImageDataset::from_mnist_dir(dir, "test");
  const Normalization norm = normalization_for(cfg);
  train_.set_normalization(norm);
  val_.set_normalization(norm);
  test_.set_normalization(norm);
  classes_ = full.num_classes();
  KILN_INPUT_CHECK(test_.rows() == full.rows() && test_.cols() == full.cols(),
                   dir << ": test images are " << test_.rows() << "x" << test_.cols() << ", training images "
                       << full.rows() << "x" << full.cols());

  SamplerOptions so;
  so.size = train_.size();
  so.batch_size = cfg.train.batch_size;
  so.shuffle = cfg.data.shuffle;
  so.drop_last = true;
  so.seed = cfg.seed;
  so.rank = process_info().rank;  // this process's shard of every global batch
  so.world = process_info().world;
  so.what = dir + " (train split)";
  sampler_ = std::make_unique<DistributedSampler>(so);
  step_samples_ = plan_batch(cfg, so.world).global;
  eval_batch_ = std::max<int64_t>(cfg.train.batch_size, 1000);

  switch (cfg.model.type) {
    case ModelType::mlp: {
      nn::MlpOptions o;
      o.in = full.sample_size();
      o.hidden = cfg.model.mlp.hidden;
      o.out = classes_;
      o.activation = cfg.model.mlp.activation == Activation::gelu ? nn::ActivationKind::gelu : nn::ActivationKind::relu;
      o.dropout = static_cast<float>(cfg.model.mlp.dropout);
      o.seed = cfg.seed;
      auto m = std::make_unique<nn::Mlp>(o, rng_);
      flops_ = m->train_flops_per_example();
      model_ = std::move(m);
      break;
    }
    default:
      throw InputError("model.type: this kiln trains image models of type mlp; cnn, resnet and vit are planned");
  }
}

bool ImageClassificationTask::has_split(Split s) const {
  switch (s) {
    case Split::train: return train_.size() > 0;
    case Split::val: return val_.size() > 0;
    case Split::test: return test_.size() > 0;
  }
  return false;
}

std::string ImageClassificationTask::describe_data() const {
  std::ostringstream os;
  os << train_.source() << ": " << train_.size() << " train, " << val_.size() << " val, " << test_.size()
     << " test images of " << train_.rows() << "x" << train_.cols() << ", " << classes_ << " classes";
  return os.str();
}

Tensor ImageClassificationTask::forward_batch(const ImageDataset& ds, const int64_t* idx, int64_t n,
                                              std::vector<int32_t>* labels) {
  // (n, rows·cols) floats filled on the host, then moved/cast for the device.
  Tensor x = Tensor::empty({n, ds.sample_size()}, DType::f32, Device::cpu(), "images");
  labels->resize(static_cast<size_t>(n));
  ds.fill(idx, n, x.data<float>(), labels->data());
  if (device_.is_cuda()) x = x.to(device_);
  if (compute_ != DType::f32) x = x.cast(compute_);
  x.set_name("images");
  return model_->forward(x);  // (n, classes)
}

TaskStats ImageClassificationTask::train_micro_batch(float loss_scale) {
  Batch b;
  // A step never straddles two epochs (the sampler alone would end an epoch
  // on a micro-batch), so every split of the global batch into processes x
  // micro-batches sees the same samples in the same steps.
  const SamplerState at = sampler_->state();
  if (at.position % step_samples_ == 0 && train_.size() - at.position < step_samples_)
    sampler_->set_epoch(at.epoch + 1);
  if (!sampler_->next(&b)) {
    sampler_->set_epoch(sampler_->epoch() + 1);
    KILN_CHECK(sampler_->next(&b), "sampler produced no batch for a new epoch");
  }
  const int64_t n = static_cast<int64_t>(b.indices.size());
  std::vector<int32_t> labels;
  Tensor logits = forward_batch(train_, b.indices.data(), n, &labels);
  const std::vector<int32_t> pred = nn::argmax_rows(logits, classes_);
  const nn::LossSum ls = loss_.forward_backward(logits, labels, classes_, loss_scale);
  model_->backward(logits);  // logits now hold dL/dlogits
  TaskStats st;
  st.loss_sum = ls.sum;
  st.loss_count = ls.count;
  st.samples = n;
  for (int64_t i = 0; i < n; ++i) st.correct += pred[static_cast<size_t>(i)] == labels[static_cast<size_t>(i)];
  return st;
}

TaskStats ImageClassificationTask::evaluate(Split split, int64_t max_batches) {
  const ImageDataset& ds = split == Split::train ? train_ : split == Split::val ? val_ : test_;
  TaskStats st;
  std::vector<int64_t> idx;
  std::vector<int32_t> labels;
  int64_t batches = 0;
  for (int64_t start = 0; start < ds.size(); start += eval_batch_) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    const int64_t n = std::min(eval_batch_, ds.size() - start);
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), start);
    Tensor logits = forward_batch(ds, idx.data(), n, &labels);
    const nn::LossSum ls = loss_.forward(logits, labels, classes_);
    const std::vector<int32_t> pred = nn::argmax_rows(logits, classes_);
    st.loss_sum += ls.sum;
    st.loss_count += ls.count;
    st.samples += n;
    for (int64_t i = 0; i < n; ++i) st.correct += pred[static_cast<size_t>(i)] == labels[static_cast<size_t>(i)];
  }
  return st;
}

nlohmann::json ImageClassificationTask::data_state() const {
  const SamplerState s = sampler_->state();
  return {{"epoch", s.epoch}, {"position", s.position}};
}

void ImageClassificationTask::restore_data_state(const nlohmann::json& j) {
  KILN_INPUT_CHECK(j.is_object() && j.contains("epoch") && j.contains("position"),
                   "checkpoint state.json: 'data' must hold epoch and position");
  SamplerState s;
  s.epoch = j.at("epoch").get<uint64_t>();
  s.position = j.at("position").get<int64_t>();
  sampler_->restore(s);
}

}  // namespace kiln
