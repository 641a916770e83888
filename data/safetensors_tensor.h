// kiln::Tensor on top of the safetensors core (data/safetensors.h): writing
// named tensors from any device, reading file tensors into new tensors or into
// existing ones (model parameters, optimizer state) by name.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "data/safetensors.h"
#include "runtime/tensor.h"

namespace kiln {

/// A tensor and the name it has in files ("layers.0.weight").
using NamedTensor = std::pair<std::string, Tensor>;

/// kiln dtype → safetensors dtype (every kiln dtype has one).
StDType to_st_dtype(DType t);
/// safetensors dtype → kiln dtype; InputError naming `what` for I64, which
/// kiln tensors do not have.
DType to_kiln_dtype(StDType t, const std::string& what);

/// Host bytes of named tensors, ready for write_safetensors: host tensors are
/// referenced as they are, device tensors copied to the host (synchronously)
/// and kept alive by this object.
class StHostViews {
 public:
  explicit StHostViews(const std::vector<NamedTensor>& tensors);
  const std::vector<StTensorView>& views() const { return views_; }

 private:
  std::vector<Tensor> keep_;
  std::vector<StTensorView> views_;
};

/// write_safetensors for tensors on any device (a separate name: braced
/// lists would make an overload ambiguous).
uint64_t write_named_tensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

/// A new tensor on `device` holding the file tensor (same dtype and shape).
/// InputError naming `what` for I64 or more than kMaxDims dims.
Tensor to_tensor(const StTensor& t, Device device, const std::string& what);

/// Copies the file's tensor `name` into `dst` (any device). Shapes must match
/// exactly; a different floating dtype is converted (bf16 file into f32
/// parameters, ...). InputError naming the file and tensor otherwise.
void load_into(const SafetensorsFile& file, const std::string& name, Tensor& dst);

/// load_into for each (name, tensor). A name the file lacks is an InputError;
/// with `strict`, so is a file tensor that no entry takes (a checkpoint of a
/// different model).
void load_tensors(const SafetensorsFile& file, const std::vector<NamedTensor>& tensors, bool strict = true);

}  // namespace kiln
