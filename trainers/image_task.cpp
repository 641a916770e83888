#include "trainers/image_task.h"

#include <numeric>
#include <sstream>

namespace kiln {

namespace {

Normalization normalization_for(const TrainConfig& c) {
  if (!c.data.normalize) return Normalization::none();
  return {true, static_cast<float>(c.data.mean), static_cast<float>(c.data.std)};
}

}  // namespace

ImageClassificationTask::ImageClassificationTask(const TrainConfig& cfg, const TaskContext& ctx)
    : ctx_(ctx), rng_(std::make_shared<nn::RngStream>()) {
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

  const int64_t n = ctx_.plan.micro * ctx_.plan.accum;
  std::vector<BatchArray> arrays = {{"images", DType::f32, {n, shape_.H, shape_.W, shape_.C}},
                                    {"labels", DType::i32, {n}}};
  loader_ = std::make_unique<StepLoader>(
      ctx_.device, std::move(arrays),
      [this](const std::vector<void*>& host) {
        return fill_step(static_cast<float*>(host[0]), static_cast<int32_t*>(host[1]));
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

StepLoader::Filled ImageClassificationTask::fill_step(float* x, int32_t* y) {
  StepLoader::Filled f;
  f.position = sampler_position();
  const int64_t B = ctx_.plan.micro, step_samples = ctx_.plan.global, P = shape_.pixels();
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
    train_.fill(b.indices.data(), B, x + micro * B * P, y + micro * B);
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
  const int64_t B = ctx_.plan.micro, P = shape_.pixels();
  const Tensor x = to_compute(step_->arrays[0].view(micro * B * P, {B, shape_.H, shape_.W, shape_.C}));
  const Tensor y = step_->arrays[1].view(micro * B, {B});
  Tensor logits = model_->forward(x);  // (B, classes)
  stats.add_correct(logits, y, shape_.classes);
  const Tensor losses = loss_.forward_backward_rows(logits, y, shape_.classes, loss_scale);
  stats.add_losses(losses, y);
  model_->backward(logits);  // logits now hold dL/dlogits
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
