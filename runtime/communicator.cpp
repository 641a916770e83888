// The backend choice, the single-process backend, and the argument checks
// every backend shares (see communicator.h).
#include "runtime/communicator.h"

#include <cstdio>
#include <cstdlib>

#include "runtime/communicator_detail.h"
#include "runtime/process_info.h"

namespace kiln {

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000.0 && u < 4) {
    bytes /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.3g %s", bytes, units[u]);
  return buf;
}

namespace detail {

std::string op_label(const char* kind, const std::string& what, double bytes) {
  std::string s = kind;
  if (!what.empty()) s += " '" + what + "'";
  s += " (" + format_bytes(bytes) + ")";
  return s;
}

namespace {

bool reducible(DType t, bool allow_lowp) {
  if (t == DType::f32 || t == DType::f64 || t == DType::i32) return true;
  return allow_lowp && (t == DType::bf16 || t == DType::f16);
}

std::string describe(const Tensor& t) {
  return "'" + t.name() + "' " + t.shape().str() + " " + dtype_name(t.dtype()) + " on " + t.device().str();
}

}  // namespace

void check_reduce(const char* op_name, const Tensor& t, ReduceOp op, bool allow_lowp) {
  KILN_CHECK(t.defined(), op_name << ": undefined tensor");
  KILN_CHECK(reducible(t.dtype(), allow_lowp),
             op_name << ": cannot reduce " << describe(t) << " (this backend reduces f32, f64, i32"
                     << (allow_lowp ? ", bf16, f16" : "") << ")");
  KILN_CHECK(!(op == ReduceOp::avg && t.dtype() == DType::i32), op_name << ": avg of integer tensor " << describe(t));
}

void check_root(const char* op_name, int root, int world) {
  KILN_CHECK(root >= 0 && root < world, op_name << ": root " << root << " is not a rank of a world of " << world);
}

void check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, int world, bool allow_lowp) {
  check_reduce("reduce_scatter", in, op, allow_lowp);
  KILN_CHECK(out.defined(), "reduce_scatter: undefined output");
  KILN_CHECK(in.dtype() == out.dtype() && in.device() == out.device(),
             "reduce_scatter: input " << describe(in) << " and output " << describe(out)
                                      << " differ in dtype or device");
  KILN_CHECK(in.numel() == out.numel() * world, "reduce_scatter: input " << describe(in) << " must hold world ("
                                                                         << world << ") x output " << describe(out));
  const char* a = static_cast<const char*>(in.raw());
  const char* b = static_cast<const char*>(out.raw());
  KILN_CHECK(in.numel() == 0 || a + in.nbytes() <= b || b + out.nbytes() <= a,
             "reduce_scatter: input " << describe(in) << " and output " << describe(out) << " overlap");
}

void check_all_gather(const Tensor& in, const Tensor& out, int world) {
  KILN_CHECK(in.defined() && out.defined(), "all_gather: undefined tensor");
  KILN_CHECK(in.dtype() == out.dtype() && in.device() == out.device(),
             "all_gather: input " << describe(in) << " and output " << describe(out) << " differ in dtype or device");
  KILN_CHECK(out.numel() == in.numel() * world, "all_gather: output " << describe(out) << " must hold world ("
                                                                      << world << ") x input " << describe(in));
}

bool all_gather_in_place(const Tensor& in, const Tensor& out, int rank) {
  if (in.numel() == 0) return false;
  const char* a = static_cast<const char*>(in.raw());
  const char* b = static_cast<const char*>(out.raw());
  if (a == b + static_cast<size_t>(rank) * in.nbytes()) return true;
  KILN_CHECK(a + in.nbytes() <= b || b + out.nbytes() <= a,
             "all_gather: input " << describe(in) << " overlaps output " << describe(out)
                                  << " without being its chunk " << rank);
  return false;
}

}  // namespace detail

namespace {

// World of one: sum, mean and max over one rank are the identity.
class SingleCommunicator final : public Communicator {
 public:
  SingleCommunicator() : Communicator(0, 1) {}
  const char* backend() const override { return "single"; }

  std::unique_ptr<CommHandle> all_reduce_async(const Tensor& t, ReduceOp op, const std::string&) override {
    detail::check_reduce("all_reduce", t, op, /*allow_lowp=*/true);
    return std::make_unique<detail::ReadyHandle>();
  }
  std::unique_ptr<CommHandle> broadcast_async(const Tensor& t, int root, const std::string&) override {
    KILN_CHECK(t.defined(), "broadcast: undefined tensor");
    detail::check_root("broadcast", root, 1);
    return std::make_unique<detail::ReadyHandle>();
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op,
                                                   const std::string&) override {
    detail::check_reduce_scatter(in, out, op, 1, /*allow_lowp=*/true);
    if (in.numel() > 0) Tensor(out).copy_from(in);
    return std::make_unique<detail::ReadyHandle>();
  }
  std::unique_ptr<CommHandle> all_gather_async(const Tensor& in, const Tensor& out, const std::string&) override {
    detail::check_all_gather(in, out, 1);
    if (in.numel() > 0 && !detail::all_gather_in_place(in, out, 0)) Tensor(out).copy_from(in);
    return std::make_unique<detail::ReadyHandle>();
  }
  void barrier(const std::string&) override {}
  void all_reduce_values(std::vector<double>&, ReduceOp, const std::string&) override {}
  void broadcast_string(std::string&, int root, const std::string&) override {
    detail::check_root("broadcast_string", root, 1);
  }
  [[noreturn]] void abort(const std::string& why, int status) override {
    std::fprintf(stderr, "kiln: %s\n", why.c_str());
    std::fflush(stderr);
    std::exit(status);
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

std::unique_ptr<Communicator> make_communicator(Device device, const CommOptions& opt) {
  KILN_CHECK(opt.timeout_s > 0, "make_communicator: timeout_s must be positive, got " << opt.timeout_s);
  if (process_info().world <= 1) return make_single_communicator();
  if (device.is_cuda()) return make_nccl_communicator(device, opt);
  return detail::make_mpi_communicator(opt);
}

}  // namespace kiln
