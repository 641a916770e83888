#include "runtime/device.h"

#include <cstdio>
#include <mutex>

#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

namespace {

struct Probe {
  int count = 0;
  std::string reason;
};

const Probe& probe() {
  static Probe p = [] {
    Probe r;
#if KILN_WITH_CUDA
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      // No driver, driver too old, no GPU: all mean "run on the CPU".
      r.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
      cudaGetLastError();
      n = 0;
    } else if (n == 0) {
      r.reason = "the CUDA runtime found no GPU";
    }
    r.count = n;
#else
    r.reason = "this kiln was built without CUDA (KILN_CUDA=OFF or no toolkit)";
#endif
    return r;
  }();
  return p;
}

}  // namespace

int cuda_device_count() { return probe().count; }
const std::string& cuda_unavailable_reason() { return probe().reason; }

Device resolve_device(const std::string& spec, int local_rank, bool announce) {
  if (spec == "cpu") return Device::cpu();
  if (spec == "auto") {
    if (cuda_available()) {
      Device d = Device::cuda(local_rank % cuda_device_count());
      if (announce) std::fprintf(stderr, "kiln: device auto -> %s\n", d.str().c_str());
      return d;
    }
    if (announce) std::fprintf(stderr, "kiln: device auto -> cpu (no GPU: %s)\n", cuda_unavailable_reason().c_str());
    return Device::cpu();
  }
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    KILN_INPUT_CHECK(cuda_available(), "device '" << spec << "' requested but no CUDA device is usable ("
                                                  << cuda_unavailable_reason() << "); use device: cpu or auto");
    int idx = local_rank % cuda_device_count();
    if (spec.size() > 5) {
      try {
        size_t used = 0;
        idx = std::stoi(spec.substr(5), &used);
        KILN_INPUT_CHECK(used == spec.size() - 5, "bad device '" << spec << "'");
      } catch (const std::logic_error&) {
        throw InputError("device '" + spec + "': expected cuda:N with N an integer");
      }
      KILN_INPUT_CHECK(idx >= 0 && idx < cuda_device_count(),
                       "device '" << spec << "' does not exist (" << cuda_device_count() << " CUDA devices)");
    }
    return Device::cuda(idx);
  }
  throw InputError("device '" + spec + "': expected cpu, cuda, cuda:N or auto");
}

std::string cuda_device_name(Device d) {
  if (d.is_cpu()) return "cpu";
#if KILN_WITH_CUDA
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, d.index));
  return prop.name;
#else
  return "cuda (not compiled in)";
#endif
}

void set_current_device(Device d) {
#if KILN_WITH_CUDA
  if (d.is_cuda()) KILN_CUDA_CHECK(cudaSetDevice(d.index));
#else
  (void)d;
#endif
}

}  // namespace kiln
