// The kiln-bench harness (see harness.h): registry, timing, peaks, the table
// and the JSON document.
#include "bench/harness.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/device.h"
#include "runtime/error.h"
#include "runtime/stream.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {

// --- registry ------------------------------------------------------------------

namespace {
std::vector<Entry>& registry() {
  static std::vector<Entry> r;  // filled by static initializers, before main
  return r;
}
}  // namespace

int register_entry(const char* name, int order, EntryFn fn) {
  registry().push_back(Entry{name, order, fn});
  return static_cast<int>(registry().size());
}

std::vector<Entry> registered_entries() {
  std::vector<Entry> e = registry();
  std::sort(e.begin(), e.end(), [](const Entry& a, const Entry& b) {
    return a.order != b.order ? a.order < b.order : a.name < b.name;
  });
  return e;
}

// --- Context -----------------------------------------------------------------------

struct Context::Impl {
  Options options;
  std::vector<Result> results;
  std::map<std::string, double> peaks;
  nlohmann::json failures = nlohmann::json::array();
  // PyTorch figures by "backend|name|shape": (ms, impl).
  std::map<std::string, std::pair<double, std::string>> torch;
  // Buffers written between repeats so every repeat starts with cold caches.
  std::vector<unsigned char> cpu_flush;
  void* gpu_flush = nullptr;
  size_t gpu_flush_bytes = 0;
};

namespace {

std::string key(const std::string& backend, const std::string& name, const std::string& shape) {
  return backend + "|" + name + "|" + shape;
}

double median(std::vector<double> v) {
  KILN_CHECK(!v.empty(), "median of no samples");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

Context::Context(const Options& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  if (!options.compare_path.empty()) {
    std::ifstream in(options.compare_path);
    KILN_INPUT_CHECK(in, "--compare " << options.compare_path << ": cannot open the file");
    nlohmann::json doc;
    try {
      in >> doc;
    } catch (const std::exception& e) {
      throw InputError("--compare " + options.compare_path + ": not JSON (" + e.what() + ")");
    }
    KILN_INPUT_CHECK(doc.is_object() && doc.contains("results") && doc["results"].is_array(),
                     "--compare " << options.compare_path << ": expected an object with a \"results\" array "
                                  << "(as written by bench/torch_bench.py)");
    for (const auto& r : doc["results"]) {
      KILN_INPUT_CHECK(r.is_object() && r.contains("name") && r.contains("shape") && r.contains("ms"),
                       "--compare " << options.compare_path << ": every result needs name, shape and ms");
      const std::string k = key(r.value("backend", std::string("cuda")), r["name"].get<std::string>(),
                                r["shape"].get<std::string>());
      const double ms = r["ms"].get<double>();
      auto it = impl_->torch.find(k);
      if (it == impl_->torch.end() || ms < it->second.first)
        impl_->torch[k] = {ms, r.value("impl", std::string("eager"))};
    }
  }
}

Context::~Context() {
#if KILN_WITH_CUDA
  if (impl_->gpu_flush) KILN_CUDA_WARN(cudaFree(impl_->gpu_flush));
#endif
}

bool Context::has_gpu() const { return cuda_available(); }
bool Context::quick() const { return impl_->options.quick; }

double Context::time_cuda(const std::function<void(cudaStream_t)>& fn, int repeats) {
  KILN_CHECK(has_gpu(), "time_cuda: no GPU (" << cuda_unavailable_reason() << ")");
  KILN_CHECK(repeats >= 1, "time_cuda: repeats = " << repeats);
#if KILN_WITH_CUDA
  const Device d = Device::cuda(0);
  set_current_device(d);
  // The compute stream: kernels launched through Tensor methods run there too.
  cudaStream_t s = compute_stream(d);
  if (!impl_->gpu_flush) {
    int l2 = 0;
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, d.index));
    impl_->gpu_flush_bytes = std::max<size_t>(2 * static_cast<size_t>(l2), size_t(64) << 20);
    KILN_CUDA_CHECK(cudaMalloc(&impl_->gpu_flush, impl_->gpu_flush_bytes));
  }
  for (int i = 0; i < 3; ++i) fn(s);  // warm-up: caches, heuristics, clocks
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<Event> start, stop;
  for (int r = 0; r < repeats; ++r) {
    start.emplace_back(d, true);
    stop.emplace_back(d, true);
  }
  for (int r = 0; r < repeats; ++r) {
    // Overwrite more than the L2 so the timed call finds none of its data there.
    KILN_CUDA_CHECK(cudaMemsetAsync(impl_->gpu_flush, r & 0xff, impl_->gpu_flush_bytes, s));
    start[static_cast<size_t>(r)].record(s);
    fn(s);
    stop[static_cast<size_t>(r)].record(s);
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  KILN_CUDA_CHECK(cudaGetLastError());
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r)
    ms.push_back(stop[static_cast<size_t>(r)].elapsed_ms(start[static_cast<size_t>(r)]));
  return median(ms);
#else
  (void)fn;
  return 0.0;
#endif
}

double Context::time_cpu(const std::function<void()>& fn, int repeats) {
  KILN_CHECK(repeats >= 1, "time_cpu: repeats = " << repeats);
  if (impl_->cpu_flush.empty()) {
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const size_t bytes = std::clamp<size_t>(llc > 0 ? 2 * static_cast<size_t>(llc) : 0, size_t(8) << 20,
                                            size_t(128) << 20);
    impl_->cpu_flush.assign(bytes, 0);
  }
  fn();  // warm-up
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    std::memset(impl_->cpu_flush.data(), r & 0xff, impl_->cpu_flush.size());
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return median(ms);
}

void Context::set_peak(const std::string& which, double value) { impl_->peaks[which] = value; }
const std::map<std::string, double>& Context::peaks() const { return impl_->peaks; }

namespace {
double peak_or_zero(const std::map<std::string, double>& p, const char* k) {
  auto it = p.find(k);
  return it == p.end() ? 0.0 : it->second;
}
}  // namespace

double Context::copy_gbps() const { return peak_or_zero(impl_->peaks, "copy"); }
double Context::gemm_bf16_tflops() const { return peak_or_zero(impl_->peaks, "gemm_bf16"); }
double Context::cpu_copy_gbps() const { return peak_or_zero(impl_->peaks, "cpu_copy"); }
double Context::cpu_sgemm_gflops() const { return 1000.0 * peak_or_zero(impl_->peaks, "cpu_sgemm"); }

void Context::print_header() const {
  std::printf("%-30s %-4s %-30s %10s %9s %8s %7s %-9s", "name", "dev", "shape", "ms", "GB/s", "TFLOP/s", "%peak",
              "of peak");
  if (!impl_->torch.empty()) std::printf(" %10s %8s", "torch ms", "speedup");
  std::printf("\n");
  std::fflush(stdout);
}

void Context::report(Result r) {
  KILN_CHECK(r.ms >= 0, "bench result '" << r.name << "' " << r.shape << ": time " << r.ms << " ms");
  const double sec = r.ms * 1e-3;
  r.gbps = sec > 0 ? r.bytes / sec / 1e9 : 0.0;
  r.tflops = sec > 0 ? r.flops / sec / 1e12 : 0.0;
  const bool cuda = r.backend == "cuda";
  auto frac = [&](const std::string& peak) -> double {
    const double p = peak_or_zero(impl_->peaks, peak.c_str());
    if (p <= 0) return 0.0;
    const bool memory = peak == "copy" || peak == "cpu_copy";
    return (memory ? r.gbps : r.tflops) / p;
  };
  if (!r.peak.empty() && impl_->peaks.count(r.peak)) {
    r.frac_peak = frac(r.peak);
  } else {
    // The roofline the result is closest to: memory for bytes, compute for flops.
    const std::string mem = cuda ? "copy" : "cpu_copy", comp = cuda ? "gemm_bf16" : "cpu_sgemm";
    const double fm = r.bytes > 0 ? frac(mem) : 0.0, fc = r.flops > 0 ? frac(comp) : 0.0;
    r.frac_peak = std::max(fm, fc);
    r.peak = r.frac_peak <= 0 ? "" : (fc >= fm ? comp : mem);
  }
  char gbps[32] = "-", tflops[32] = "-", pct[32] = "-";
  if (r.bytes > 0) std::snprintf(gbps, sizeof gbps, "%.1f", r.gbps);
  if (r.flops > 0) std::snprintf(tflops, sizeof tflops, "%.3f", r.tflops);
  if (r.frac_peak > 0) std::snprintf(pct, sizeof pct, "%.1f%%", 100.0 * r.frac_peak);
  std::printf("%-30s %-4s %-30s %10.4f %9s %8s %7s %-9s", r.name.c_str(), r.backend.c_str(), r.shape.c_str(), r.ms,
              gbps, tflops, pct, r.peak.c_str());
  if (!impl_->torch.empty()) {
    auto it = impl_->torch.find(key(r.backend, r.name, r.shape));
    if (it != impl_->torch.end())
      std::printf(" %10.4f %7.2fx", it->second.first, it->second.first / r.ms);
    else
      std::printf(" %10s %8s", "-", "-");
  }
  std::printf("\n");
  std::fflush(stdout);
  impl_->results.push_back(std::move(r));
}

const std::vector<Result>& Context::results() const { return impl_->results; }

void Context::add_failure(const std::string& entry, const std::string& error) {
  impl_->failures.push_back({{"entry", entry}, {"error", error}});
}

std::string Context::json() const {
  nlohmann::json doc;
  doc["tool"] = "kiln-bench";
  doc["quick"] = quick();
  doc["gpu"] = has_gpu();
  std::string device = "cpu";
#if KILN_WITH_CUDA
  if (has_gpu()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) device = prop.name;
  }
#endif
  doc["device"] = device;
  if (!has_gpu()) doc["no_gpu_reason"] = cuda_unavailable_reason();
  doc["peaks"] = impl_->peaks;
  nlohmann::json results = nlohmann::json::array();
  for (const Result& r : impl_->results) {
    nlohmann::json j = {{"name", r.name},   {"backend", r.backend}, {"shape", r.shape},
                        {"ms", r.ms},       {"bytes", r.bytes},     {"flops", r.flops},
                        {"gbps", r.gbps},   {"tflops", r.tflops},   {"frac_peak", r.frac_peak},
                        {"peak", r.peak}};
    auto it = impl_->torch.find(key(r.backend, r.name, r.shape));
    if (it != impl_->torch.end()) {
      j["torch_ms"] = it->second.first;
      j["torch_impl"] = it->second.second;
    }
    results.push_back(std::move(j));
  }
  doc["results"] = std::move(results);
  doc["failures"] = impl_->failures;
  return doc.dump(2);
}

}  // namespace kiln::bench
