#include "trainers/image_task.h"

#include <cstring>
#include <numeric>
#include <sstream>

#include "nn/batchnorm.h"
#include "runtime/dispatch.h"

namespace kiln {

namespace {

Normalization normalization_for(const TrainConfig& c) {
  if (!c.data.normalize) return Normalization::none();
  return {true, static_cast<float>(c.data.mean), static_cast<float>(c.data.std)};
}

}  // namespace

ImageClassificationTask::ImageClassificationTask(const TrainConfig& cfg, const TaskContext& ctx)
    : ctx_(ctx), rng_(std::make_shared<nn::RngStream>()),
      loss_(static_cast<float>(cfg.train.label_smoothing)) {
  rng_->seed = cfg.seed;
  const std::string& dir = cfg.data.path;
  ImageDataset full = ImageDataset::from_mnist_dir(dir, "train");
  std::tie(train_, val_) = split_train_val(full, cfg.data.val_fraction, cfg.seed);
  test_ = ImageDataset::from_mnist_dir(dir, "test");
  const Normalization norm = normalization_for(cfg);
  train_.set_normalization(norm);
  val_.set_normalization(norm);
  test_.set_normalization(norm);
  KILN_INPUT_CHECK(test_.rows() == full.rows() && test_.cols() == full.cols(),
                   dir << ": test images are " << test_.rows() << "x" << test_.cols() << ", training images "
                       << full.rows() << "x" << full.cols());
  shape_ = {full.rows(), full.cols(), 1, full.num_classes()};  // IDX images are grayscale

  SamplerOptions so;
  so.size = train_.size();
  so.batch_size = ctx_.plan.micro;
  so.shuffle = cfg.data.shuffle;
  so.drop_last = true;
  so.seed = cfg.seed;
  so.rank = ctx_.rank;  // this process's shard of every global batch
  so.world = ctx_.world;
  so.what = dir + " (train split)";
  sampler_ = std::make_unique<DistributedSampler>(so);
  eval_batch_ = std::max<int64_t>(ctx_.plan.micro, 1000);

  DataShape ds;
  ds.image = shape_;
  BuiltModel built = build_model(cfg, ds, rng_);
  flops_ = built.train_flops_per_example;
  model_ = std::move(built.module);
  nn::set_batchnorm_deferred(*model_, true);  // one running-statistics update per step

  // The training split's pixels, in view order, uploaded once; the LUT is
  // the dataset's normalization (the same formula as ImageDataset::fill).
  const int64_t P = shape_.pixels();
  Tensor px = Tensor::empty({train_.size(), shape_.H, shape_.W, shape_.C}, DType::u8, Device::cpu(), "train pixels");
  for (int64_t i = 0; i < train_.size(); ++i) std::memcpy(px.data<uint8_t>() + i * P, train_.image(i), P);
  train_pixels_ = ctx_.device.is_cuda() ? px.to(ctx_.device) : px;
  std::vector<float> lut(256);
  augment_lut(lut.data(), norm.enabled, norm.mean, norm.std);
  lut_ = Tensor::from_vector(lut, {256}, DType::f32, ctx_.device);
  augment_.h = shape_.H;
  augment_.w = shape_.W;
  augment_.c = shape_.C;
  augment_.pad = cfg.data.augment.crop_padding;
  augment_.flip = cfg.data.augment.hflip;
  augment_.seed = cfg.seed;
  KILN_INPUT_CHECK(augment_.pad < shape_.H && augment_.pad < shape_.W,
                   "data.augment.crop_padding: " << augment_.pad << " is not smaller than the " << shape_.H << "x"
                                                 << shape_.W << " images");

  const int64_t n = ctx_.plan.micro * ctx_.plan.accum;
  std::vector<BatchArray> arrays = {{"keys", DType::i32, {n, 2}}, {"labels", DType::i32, {n}}};
  loader_ = std::make_unique<StepLoader>(
      ctx_.device, std::move(arrays),
      [this](const std::vector<void*>& host) {
        return fill_step(static_cast<int32_t*>(host[0]), static_cast<int32_t*>(host[1]));
      },
      /*background=*/cfg.data.num_workers > 0);
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
     << " test images of " << train_.rows() << "x" << train_.cols() << ", " << shape_.classes << " classes";
  return os.str();
}

StepLoader::Filled ImageClassificationTask::fill_step(int32_t* keys, int32_t* y) {
  StepLoader::Filled f;
  f.position = sampler_position();
  const int64_t B = ctx_.plan.micro, step_samples = ctx_.plan.global;
  for (int64_t micro = 0; micro < ctx_.plan.accum; ++micro) {
    // A step never straddles two epochs (the sampler alone would end an
    // epoch on a micro-batch), so every split of the global batch into
    // processes x micro-batches sees the same samples in the same steps.
    const SamplerState at = sampler_->state();
    if (at.position % step_samples == 0 && train_.size() - at.position < step_samples)
      sampler_->set_epoch(at.epoch + 1);
    Batch b;
    if (!sampler_->next(&b)) {
      sampler_->set_epoch(sampler_->epoch() + 1);
      KILN_CHECK(sampler_->next(&b), "sampler produced no batch for a new epoch");
    }
    KILN_CHECK(static_cast<int64_t>(b.indices.size()) == B,
               "sampler gave " << b.indices.size() << " samples for a micro-batch of " << B);
    train_.fill(b.indices.data(), B, nullptr, y + micro * B);  // labels (and an index check)
    // A sample's key names it and its epoch: its crop is the same on any
    // process count. Keys travel as int32 pairs, the halves of the int64.
    const uint64_t epoch = sampler_->epoch();
    for (int64_t i = 0; i < B; ++i) {
      const int64_t k = augment_key(epoch, b.indices[static_cast<size_t>(i)]);
      std::memcpy(keys + 2 * (micro * B + i), &k, sizeof k);
    }
  }
  f.batch.examples = B * ctx_.plan.accum;
  f.batch.units = f.batch.examples;
  f.batch.loss_tokens = f.batch.examples;  // every image has a label
  return f;
}

Tensor ImageClassificationTask::to_compute(const Tensor& x) const {
  if (ctx_.compute == DType::f32) return x;
  Tensor c = x.cast(ctx_.compute);
  c.set_name("images");
  return c;
}

StepBatch ImageClassificationTask::begin_step() {
  step_ = &loader_->next();
  return step_->batch;
}

void ImageClassificationTask::train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) {
  KILN_CHECK(step_ && micro >= 0 && micro < ctx_.plan.accum, "train_micro_batch " << micro << " outside the step");
  const int64_t B = ctx_.plan.micro;
  // (B, H, W, C) in the compute dtype: gather + crop + flip + normalize.
  Tensor x = Tensor::empty({B, shape_.H, shape_.W, shape_.C}, ctx_.compute, ctx_.device, "images");
  const int64_t* keys = reinterpret_cast<const int64_t*>(step_->arrays[0].data<int32_t>()) + micro * B;
  dispatch(
      x, [&](auto tag) { using T = decltype(tag);
        augment_batch_cpu<T>(x.data<T>(), train_pixels_.data<uint8_t>(), train_.size(), keys, B, augment_,
                             lut_.data<float>()); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        augment_batch(x.data<T>(), train_pixels_.data<uint8_t>(), keys, B, augment_, lut_.data<float>(), s); });
  const Tensor y = step_->arrays[1].view(micro * B, {B});
  Tensor logits = model_->forward(x);  // (B, classes)
  stats.add_correct(logits, y, shape_.classes);
  const Tensor losses = loss_.forward_backward_rows(logits, y, shape_.classes, loss_scale);
  stats.add_losses(losses, y);
  model_->backward(logits);  // logits now hold dL/dlogits
  if (micro == ctx_.plan.accum - 1) {
    // The step's BatchNorm statistics, averaged over its micro-batches on every rank.
    std::function<void(Tensor&)> sum;
    if (ctx_.world > 1)
      sum = [this](Tensor& t) { ctx_.communicator().all_reduce(t, ReduceOp::sum, "batchnorm statistics"); };
    nn::update_batchnorm_running_stats(*model_, sum, ctx_.world);
  }
}

TaskStats ImageClassificationTask::evaluate(Split split, int64_t max_batches) {
  const ImageDataset& ds = split == Split::train ? train_ : split == Split::val ? val_ : test_;
  TaskStats st;
  LossStats sums(ctx_.device);
  std::vector<int64_t> idx;
  std::vector<int32_t> labels;
  int64_t batches = 0;
  for (int64_t start = 0; start < ds.size(); start += eval_batch_) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    const int64_t n = std::min(eval_batch_, ds.size() - start);
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), start);
    labels.resize(static_cast<size_t>(n));
    Tensor x = Tensor::empty({n, shape_.H, shape_.W, shape_.C}, DType::f32, Device::cpu(), "images");
    ds.fill(idx.data(), n, x.data<float>(), labels.data());
    if (ctx_.device.is_cuda()) x = x.to(ctx_.device);
    const Tensor y = Tensor::from_vector(labels, {n}, ctx_.device);
    const Tensor logits = model_->forward(to_compute(x));  // (n, classes)
    sums.add_correct(logits, y, shape_.classes);
    sums.add_losses(loss_.forward_rows(logits, y, shape_.classes), y);
    st.loss_count += n;
    st.samples += n;
    st.units += n;
  }
  const std::vector<double> v = sums.read();
  st.loss_sum = v[0];
  st.correct = static_cast<int64_t>(v[1]);
  return st;
}

nlohmann::json ImageClassificationTask::sampler_position() const {
  const SamplerState s = sampler_->state();
  return {{"epoch", s.epoch}, {"position", s.position}};
}

nlohmann::json ImageClassificationTask::data_state() const {
  return loader_->position([this] { return sampler_position(); });
}

void ImageClassificationTask::restore_data_state(const nlohmann::json& j) {
  KILN_INPUT_CHECK(j.is_object() && j.contains("epoch") && j.contains("position"),
                   "checkpoint state.json: 'data' must hold epoch and position");
  loader_->reset();
  SamplerState s;
  s.epoch = j.at("epoch").get<uint64_t>();
  s.position = j.at("position").get<int64_t>();
  sampler_->restore(s);
}

}  // namespace kiln
