// Where tensors live and kernels run: the CPU or one CUDA device.
#pragma once

#include <string>

namespace kiln {

enum class DeviceKind { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceKind::cuda, i}; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  /// "cpu" or "cuda:N".
  std::string str() const;
};

/// Number of usable CUDA devices; 0 in the CPU-only build, without a driver or
/// without a GPU. The first call probes once and caches the answer.
int cuda_device_count();
/// Why cuda_device_count() is 0 ("CPU-only build", the driver's error, ...);
/// empty when a device exists.
const std::string& cuda_unavailable_reason();
inline bool cuda_available() { return cuda_device_count() > 0; }

/// Resolves a config's `device:` value: "cpu", "cuda", "cuda:N" or "auto".
/// "auto" picks cuda:local_rank when a GPU exists, else the CPU, and prints
/// one line saying which and why. "cuda" without a GPU is an InputError.
Device resolve_device(const std::string& spec, int local_rank = 0, bool announce = true);

/// The GPU's marketing name ("NVIDIA H200"); "cpu" for the CPU.
std::string cuda_device_name(Device d);

/// Makes `d` current for this thread (cudaSetDevice); no-op for the CPU.
void set_current_device(Device d);

}  // namespace kiln
