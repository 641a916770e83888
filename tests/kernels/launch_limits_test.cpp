// Launch limits the CPU emulation cannot see: every CUDA kernel's static
// shared memory, registers and thread limit, and the layernorm backward
// launch plan (the one launcher that sizes dynamic shared memory by shape)
// against what an sm_90 block may use.
//
// Where the numbers come from. Without a GPU (CI, the development machines)
// the test reads the built objects: libkiln_kernels.a's members each carry a
// fatbinary (.nv_fatbin) whose sm_90a cubin is an uncompressed ELF (nvcc
// compresses only PTX by default). A kernel is a FUNC symbol marked as a CUDA
// entry; its registers are EIATTR_REGCOUNT in .nv.info, its launch bound
// EIATTR_MAX_THREADS in .nv.info.<kernel>, its static shared memory the size
// of .nv.shared.<kernel> less the 1 KB the driver reserves per block on sm_80+
// (checked here against `ptxas -v` for all 143 kernels of the tree when this
// was written: section size = ptxas's "bytes smem" + 1024 whenever the section
// exists, 0 otherwise). On a GPU the LaunchLimitsGpu tests load the same
// cubins with cudaLibraryLoadData and check that cudaFuncGetAttributes agrees
// with the parse for every kernel, then launch layernorm_backward at every
// boundary of its plan.
//
// The same checks run on a -G (device debug) build of layernorm.cu, compiled
// by tests/CMakeLists.txt: it keeps more static shared memory and registers
// (ptxas -O0 gives a kernel that uses dynamic shared memory every
// module-scope shared array, and ignores launch-bound register caps), which
// is how the backward's exactly-48 KB warp plan once failed at C = 768.
#include <cxxabi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/layernorm.h"
#include "kernels/layernorm_plan.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/error.h"
#endif

namespace kiln {
namespace {

// sm_90 (H100/H200) per-block limits.
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kRegistersPerBlock = 64 * 1024;
constexpr size_t kSmemOptinSm90 = 227 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
constexpr size_t kReservedSmem = 1024;          // cudaDevAttrReservedSharedMemoryPerBlock (sm_80+)

// --- reading the built objects ----------------------------------------------------

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

template <typename T>
T get(const std::string& b, size_t off) {
  if (off + sizeof(T) > b.size()) throw std::runtime_error("read past the end at " + std::to_string(off));
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

struct Section {
  std::string name;
  uint32_t type = 0, link = 0, info = 0;
  uint64_t offset = 0, size = 0;
};

// The section headers of an ELF64 little-endian file (host object or cubin).
std::vector<Section> elf_sections(const std::string& b) {
  if (b.size() < 64 || b.compare(0, 4, "\x7f" "ELF") != 0 || b[4] != 2 || b[5] != 1)
    throw std::runtime_error("not a little-endian ELF64 file");
  const auto shoff = get<uint64_t>(b, 0x28);
  const auto shentsize = get<uint16_t>(b, 0x3a), shnum = get<uint16_t>(b, 0x3c), shstrndx = get<uint16_t>(b, 0x3e);
  std::vector<Section> s(shnum);
  for (size_t i = 0; i < shnum; ++i) {
    const size_t h = shoff + i * shentsize;
    s[i].name = std::to_string(get<uint32_t>(b, h));  // resolved below
    s[i].type = get<uint32_t>(b, h + 4);
    s[i].offset = get<uint64_t>(b, h + 24);
    s[i].size = get<uint64_t>(b, h + 32);
    s[i].link = get<uint32_t>(b, h + 40);
    s[i].info = get<uint32_t>(b, h + 44);
  }
  if (shstrndx >= shnum) throw std::runtime_error("bad section-name table index");
  const uint64_t strtab = s[shstrndx].offset;
  for (auto& sec : s) {
    const size_t at = strtab + std::stoul(sec.name);
    const size_t end = b.find('\0', at);
    if (end == std::string::npos) throw std::runtime_error("unterminated section name");
    sec.name = b.substr(at, end - at);
  }
  return s;
}

std::string demangle(const std::string& m) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(m.c_str(), nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : m;
}

/// One kernel as the cubin describes it.
struct KernelInfo {
  std::string source;   // the .cu file (from the fatbinary entry)
  std::string mangled;  // entry symbol
  std::string name;     // demangled
  size_t static_smem = 0;
  int regs = 0;
  int launch_bound = 0;  // __launch_bounds__ (x·y·z of EIATTR_MAX_THREADS), 0 if none

  /// Threads per block the driver allows (cudaFuncAttributes::maxThreadsPerBlock):
  /// the launch bound, or fewer when the registers do not fit (allocated per
  /// warp in units of 256, i.e. per thread rounded up to 8; 64K per block).
  int max_threads() const {
    const int per_thread = std::max(8, (regs + 7) / 8 * 8);
    const int by_regs = kRegistersPerBlock / (per_thread * 32) * 32;
    return std::min({launch_bound > 0 ? launch_bound : kMaxThreadsPerBlock, by_regs, kMaxThreadsPerBlock});
  }
  KernelLimits limits() const { return KernelLimits{static_smem, max_threads()}; }
};

/// Every entry function of one cubin.
std::vector<KernelInfo> parse_cubin(const std::string& b, const std::string& source) {
  const std::vector<Section> secs = elf_sections(b);
  constexpr uint32_t kSymtab = 2;
  const Section* symtab = nullptr;
  for (const auto& s : secs)
    if (s.type == kSymtab) symtab = &s;
  if (!symtab) throw std::runtime_error(source + ": cubin without a symbol table");
  const Section& symstr = secs.at(symtab->link);
  struct Sym {
    std::string name;
    uint8_t info, other;
  };
  std::vector<Sym> syms(symtab->size / 24);
  for (size_t i = 0; i < syms.size(); ++i) {
    const size_t e = symtab->offset + 24 * i;
    const size_t at = symstr.offset + get<uint32_t>(b, e);
    syms[i] = {b.substr(at, b.find('\0', at) - at), get<uint8_t>(b, e + 4), get<uint8_t>(b, e + 5)};
  }
  // Attributes: {u8 format, u8 attribute, u16 size-or-value}; format 4
  // (EIFMT_SVAL) is followed by `size` bytes of value.
  auto attributes = [&](const Section& s, auto&& fn) {
    for (size_t p = s.offset; p + 4 <= s.offset + s.size;) {
      const uint8_t fmt = get<uint8_t>(b, p), attr = get<uint8_t>(b, p + 1);
      const uint16_t sz = get<uint16_t>(b, p + 2);
      if (fmt == 4) {
        fn(attr, p + 4, sz);
        p += 4 + sz;
      } else {
        p += 4;
      }
    }
  };
  constexpr uint8_t kMaxThreads = 0x05, kRegCount = 0x2f;
  std::map<uint32_t, int> regs_of_sym;
  std::map<std::string, const Section*> by_name;
  for (const auto& s : secs) {
    by_name[s.name] = &s;
    if (s.name == ".nv.info")
      attributes(s, [&](uint8_t attr, size_t v, uint16_t sz) {
        if (attr == kRegCount && sz == 8) regs_of_sym[get<uint32_t>(b, v)] = static_cast<int>(get<uint32_t>(b, v + 4));
      });
  }
  constexpr uint8_t kStoCudaEntry = 0x10;  // st_other of a __global__ function
  constexpr uint8_t kSttFunc = 2;
  std::vector<KernelInfo> out;
  for (uint32_t i = 0; i < syms.size(); ++i) {
    const Sym& y = syms[i];
    if ((y.info & 0xf) != kSttFunc || !(y.other & kStoCudaEntry)) continue;
    KernelInfo k;
    k.source = source;
    k.mangled = y.name;
    k.name = demangle(y.name);
    const auto r = regs_of_sym.find(i);
    if (r == regs_of_sym.end()) throw std::runtime_error(source + ": no register count for " + k.name);
    k.regs = r->second;
    if (auto it = by_name.find(".nv.shared." + y.name); it != by_name.end()) {
      if (it->second->size < kReservedSmem)
        throw std::runtime_error(source + ": " + k.name + ": .nv.shared section smaller than the 1 KB reserve");
      k.static_smem = it->second->size - kReservedSmem;
    }
    if (auto it = by_name.find(".nv.info." + y.name); it != by_name.end())
      attributes(*it->second, [&](uint8_t attr, size_t v, uint16_t sz) {
        if (attr == kMaxThreads && sz == 12)
          k.launch_bound = static_cast<int>(get<uint32_t>(b, v) * get<uint32_t>(b, v + 4) * get<uint32_t>(b, v + 8));
      });
    out.push_back(std::move(k));
  }
  return out;
}

struct Cubin {
  std::string source;
  std::string bytes;
};

// The sm_* cubins of a fatbinary: header {u32 magic, u16 version, u16
// header size, u64 size}, then entries {u16 kind (1 PTX, 2 ELF), u16, u32
// header size, u64 payload size, ..., at +0x20 u32 offset and u32 length of
// the source name within the entry header}. Compressed entries do not start
// with an ELF header and are an error (the build would have changed).
void fatbin_cubins(const std::string& b, size_t begin, size_t end, std::vector<Cubin>* out) {
  for (size_t p = begin; p + 16 <= end;) {
    if (get<uint32_t>(b, p) != 0xBA55ED50u) throw std::runtime_error("bad fatbinary magic");
    const size_t hs = get<uint16_t>(b, p + 6);
    const size_t fat = get<uint64_t>(b, p + 8);
    for (size_t e = p + hs; e + 16 <= p + hs + fat;) {
      const uint16_t kind = get<uint16_t>(b, e);
      const size_t ehs = get<uint32_t>(b, e + 4);
      const size_t size = get<uint64_t>(b, e + 8);
      if (kind == 2) {
        const std::string payload = b.substr(e + ehs, size);
        std::string source = "?";
        const size_t noff = get<uint32_t>(b, e + 0x20), nlen = get<uint32_t>(b, e + 0x24);
        if (noff + nlen <= ehs && nlen > 0) source = b.substr(e + noff, nlen);
        source = source.c_str();  // drop padding NULs
        if (payload.compare(0, 4, "\x7f" "ELF") != 0)
          throw std::runtime_error(source + ": the sm cubin in the fatbinary is compressed (built with -compress-all?)");
        out->push_back({source, payload});
      }
      e += ehs + size;
    }
    p += hs + fat;
  }
}

// The cubins in every member of a static library (ar archive) or in one object
// (unused in a CPU-only build, which has no CUDA objects).
[[maybe_unused]] std::vector<Cubin> cubins_of(const std::string& path) {
  const std::string b = read_all(path);
  std::vector<std::string> objects;
  if (b.compare(0, 8, "!<arch>\n") == 0) {
    for (size_t p = 8; p + 60 <= b.size();) {
      const size_t size = std::stoul(b.substr(p + 48, 10));
      if (b.compare(p + 60, 4, "\x7f" "ELF") == 0) objects.push_back(b.substr(p + 60, size));
      p += 60 + size + (size & 1);
    }
  } else {
    objects.push_back(b);
  }
  std::vector<Cubin> out;
  for (const std::string& o : objects)
    for (const Section& s : elf_sections(o))
      if (s.name == ".nv_fatbin") fatbin_cubins(o, s.offset, s.offset + s.size, &out);
  return out;
}

[[maybe_unused]] std::vector<KernelInfo> kernels_of(const std::vector<Cubin>& cubins) {
  std::vector<KernelInfo> all;
  for (const Cubin& c : cubins) {
    std::vector<KernelInfo> k = parse_cubin(c.bytes, c.source);
    all.insert(all.end(), k.begin(), k.end());
  }
  return all;
}

[[maybe_unused]] const KernelInfo* find_kernel(const std::vector<KernelInfo>& ks, const std::string& needle) {
  const KernelInfo* found = nullptr;
  for (const auto& k : ks)
    if (k.name.find(needle) != std::string::npos) {
      if (found) ADD_FAILURE() << "two kernels match '" << needle << "': " << found->name << " and " << k.name;
      found = &k;
    }
  return found;
}

// --- the checks ---------------------------------------------------------------------

// Kernels without __launch_bounds__ whose registers do not fit 1024 threads,
// with the block their launcher asks for (kept in step by hand: give such a
// kernel __launch_bounds__(block) instead and drop its line).
struct UnboundedKernel {
  const char* name;  // substring of the demangled name
  int block;
  const char* where;
};
constexpr UnboundedKernel kUnboundedKernels[] = {
    {"avgpool_backward_kernel<", 256, "kernels/pool.cu: launch_1d(avgpool_backward_kernel..., 256, ...)"},
};

// Every kernel could launch at the block its launcher may use: static shared
// memory under 48 KB; a declared bound within 1024 threads and within what
// its registers allow; a kernel without a bound must fit 1024 threads (<= 64
// registers), since nothing then stops a launcher from asking for them, or
// be listed above with its launcher's block.
[[maybe_unused]] void check_every_kernel(const std::vector<KernelInfo>& ks, const std::string& build) {
  for (const KernelInfo& k : ks) {
    SCOPED_TRACE(build + ": " + k.source + ": " + k.name);
    EXPECT_LE(k.static_smem, kSmemNoOptIn) << "static shared memory alone exceeds 48 KB";
    if (k.launch_bound > 0) {
      EXPECT_LE(k.launch_bound, kMaxThreadsPerBlock);
      EXPECT_GE(k.max_threads(), k.launch_bound)
          << k.regs << " registers per thread do not fit " << k.launch_bound << " threads (64K per block)";
      continue;
    }
    if (k.max_threads() >= kMaxThreadsPerBlock) continue;
    const UnboundedKernel* u = nullptr;
    for (const auto& e : kUnboundedKernels)
      if (k.name.find(e.name) != std::string::npos) u = &e;
    if (u) {
      EXPECT_LE(u->block, k.max_threads()) << u->where << ": " << k.regs << " registers allow " << k.max_threads()
                                           << " threads";
    } else {
      ADD_FAILURE() << "no __launch_bounds__ and " << k.regs << " registers: blocks over " << k.max_threads()
                    << " threads fail to launch; declare __launch_bounds__(the block its launcher uses)";
    }
  }
}

// The backward's plan for every row length, against the chosen kernel's
// limits: within the thread limit, within 48 KB unless it opts in, within
// the opt-in maximum always, and with room for every group's accumulators.
void check_layernorm_plan(int elem_bytes, KernelLimits warp, KernelLimits block, size_t optin,
                          const std::string& what) {
  std::vector<int64_t> Cs;
  for (int64_t c = 1; c <= 70000; ++c) Cs.push_back(c);
  for (int64_t c = 70001; c < (int64_t{1} << 22); c = c * 9 / 8 + 7) Cs.push_back(c);
  int failures = 0;
  for (int64_t C : Cs) {
    const LayerNormBackwardPlan p = plan_layernorm_backward(C, elem_bytes, warp, block, optin);
    const KernelLimits& k = p.warp ? warp : block;
    const int64_t N = 16 / elem_bytes;
    const size_t row_acc = 2 * static_cast<size_t>((C + N - 1) / N) * N * sizeof(float);
    const size_t total = p.static_smem + p.dynamic_smem;
    const bool ok = p.static_smem == k.static_smem && p.block >= 32 && p.block % 32 == 0 && p.block <= k.max_threads &&
                    p.opt_in == (total > kSmemNoOptIn) && total <= (p.opt_in ? optin : kSmemNoOptIn) &&
                    (p.warp ? p.smem_acc && p.dynamic_smem == static_cast<size_t>(p.block / 32) * row_acc
                            : p.dynamic_smem == (p.smem_acc ? row_acc : 0));
    if (!ok && ++failures <= 5)
      ADD_FAILURE() << what << ": C = " << C << ": " << (p.warp ? "warp" : "block") << " plan, block " << p.block
                    << " (kernel allows " << k.max_threads << "), static " << p.static_smem << " + dynamic "
                    << p.dynamic_smem << " = " << total << " bytes, opt_in " << p.opt_in << " (limit "
                    << (p.opt_in ? optin : kSmemNoOptIn) << ")";
  }
  EXPECT_EQ(failures, 0) << what << ": plans outside the limits";
}

// The plan as the launcher computed it before issue #11: 8 warps of
// accumulators sized against 48 KB alone, and the opt-in decided by the
// dynamic size alone. Kept to show the check above catches what it got wrong.
bool old_plan_fits(int64_t C, int elem_bytes, KernelLimits warp, KernelLimits block) {
  const int64_t N = 16 / elem_bytes, K = 32 / N, nch = (C + N - 1) / N;
  const size_t row_acc = 2 * static_cast<size_t>(nch) * N * sizeof(float);
  if (nch <= 32 * K) {
    const size_t warps = std::clamp<size_t>(kSmemNoOptIn / row_acc, 1, 8);
    return warp.static_smem + warps * row_acc <= kSmemNoOptIn;  // never opted in
  }
  const bool smem_acc = row_acc + 1024 <= kSmemOptinSm90;
  const size_t dyn = smem_acc ? row_acc : 0;
  const bool opted = dyn > kSmemNoOptIn;
  return block.static_smem + dyn <= (opted ? kSmemOptinSm90 : kSmemNoOptIn);
}

TEST(LaunchLimits, LayerNormBackwardPlanCountsStaticSharedMemory) {
  // Any static size and thread limit the kernels could come with (0: a
  // kernel without block reductions; 128: the reductions' partial[32]; more:
  // a debug build or a future change), in both storage widths.
  for (int elem : {4, 2})
    for (size_t st : {size_t{0}, size_t{16}, size_t{128}, size_t{1024}, size_t{4096}, size_t{16384}})
      for (int threads : {1024, 512, 320, 256, 64}) {
        const KernelLimits warp{st, std::min(threads, kLayerNormWarpBackwardBlock)};
        const KernelLimits block{st, std::min(threads, kLayerNormMaxBlock)};
        check_layernorm_plan(elem, warp, block, kSmemOptinSm90,
                             "elem " + std::to_string(elem) + " static " + std::to_string(st) + " threads " +
                                 std::to_string(threads));
      }
  // The two failures of issue #11, which the old plan had and this one has not:
  // C = 6129..6144 in fp32 (6137..6144 in bf16) with the block reductions'
  // 128 static bytes asked for 48 KB of dynamic shared memory without opting
  // in; a -G build's 128 static bytes beside 8 warps x 6 KB at C = 768.
  const KernelLimits opt_warp{0, 256}, opt_block{128, 512}, debug_warp{128, 320};
  for (int64_t C = 6129; C <= 6144; ++C) {
    EXPECT_FALSE(old_plan_fits(C, 4, opt_warp, opt_block)) << C;
    const LayerNormBackwardPlan p = plan_layernorm_backward(C, 4, opt_warp, opt_block, kSmemOptinSm90);
    EXPECT_TRUE(p.opt_in && !p.warp && p.static_smem + p.dynamic_smem <= kSmemOptinSm90) << C;
  }
  EXPECT_TRUE(old_plan_fits(6128, 4, opt_warp, opt_block));
  EXPECT_FALSE(old_plan_fits(6144, 2, opt_warp, opt_block));
  EXPECT_FALSE(old_plan_fits(768, 4, debug_warp, opt_block));
  const LayerNormBackwardPlan d = plan_layernorm_backward(768, 4, debug_warp, opt_block, kSmemOptinSm90);
  EXPECT_TRUE(d.warp);
  EXPECT_EQ(d.block, 7 * 32);  // (48 KB - 128) / 6 KB = 7 warps
  EXPECT_LE(d.static_smem + d.dynamic_smem, kSmemNoOptIn);
  EXPECT_FALSE(d.opt_in);
}

#if defined(KILN_KERNELS_LIB)
const std::vector<KernelInfo>& built_kernels() {
  static const std::vector<KernelInfo> k = kernels_of(cubins_of(KILN_KERNELS_LIB));
  return k;
}

TEST(LaunchLimits, EveryBuiltKernelFitsAnSm90Block) {
  const std::vector<KernelInfo>& ks = built_kernels();
  // A parse that found nothing (or missed a file) must not pass quietly.
  std::set<std::string> sources;
  for (const auto& k : ks) sources.insert(k.source);
  ASSERT_GE(ks.size(), 60u) << "kernels found in " << KILN_KERNELS_LIB;
  for (const char* f : {"layernorm.cu", "softmax.cu", "cross_entropy.cu", "attention.cu", "optimizer.cu", "fill.cu"})
    EXPECT_TRUE(std::any_of(sources.begin(), sources.end(),
                            [&](const std::string& s) { return s.size() >= std::strlen(f) && s.compare(s.size() - std::strlen(f), std::string::npos, f) == 0; }))
        << "no kernels of kernels/" << f << " found";
  // Known facts of this tree (ptxas -v): the block-per-row reductions use
  // 32 floats of static shared memory, the warp-per-row kernels none.
  const KernelInfo* fwd_block = find_kernel(ks, "layernorm_forward_kernel<float, false>");
  const KernelInfo* bwd_warp = find_kernel(ks, "layernorm_backward_kernel<float, true>");
  const KernelInfo* reduce = find_kernel(ks, "layernorm_param_reduce_kernel");
  ASSERT_TRUE(fwd_block && bwd_warp && reduce);
  EXPECT_EQ(fwd_block->static_smem, 128u);
  EXPECT_EQ(fwd_block->launch_bound, kLayerNormMaxBlock);
  EXPECT_EQ(bwd_warp->static_smem, 0u);
  EXPECT_EQ(bwd_warp->launch_bound, kLayerNormWarpBackwardBlock);
  EXPECT_EQ(reduce->static_smem, 8u * 33u * 4u);
  check_every_kernel(ks, "optimized build");
  std::printf("launch limits: %zu kernels in %zu files checked\n", ks.size(), sources.size());
}

TEST(LaunchLimits, LayerNormBackwardPlanFitsTheBuiltKernels) {
  for (const auto& [type, elem] : {std::pair<const char*, int>{"float", 4}, {"__nv_bfloat16", 2}}) {
    const KernelInfo* w = find_kernel(built_kernels(), std::string("layernorm_backward_kernel<") + type + ", true>");
    const KernelInfo* b = find_kernel(built_kernels(), std::string("layernorm_backward_kernel<") + type + ", false>");
    ASSERT_TRUE(w && b) << type;
    check_layernorm_plan(elem, w->limits(), b->limits(), kSmemOptinSm90, std::string("optimized build, ") + type);
  }
}
#else
TEST(LaunchLimits, EveryBuiltKernelFitsAnSm90Block) { GTEST_SKIP() << "CPU-only build: no CUDA objects to read"; }
#endif

#if defined(KILN_LAYERNORM_DEBUG_CUBIN)
TEST(LaunchLimits, DebugBuildOfLayerNormFits) {
  const std::vector<KernelInfo> ks = kernels_of({Cubin{"layernorm.cu (-G)", read_all(KILN_LAYERNORM_DEBUG_CUBIN)}});
  ASSERT_EQ(ks.size(), 9u);
  check_every_kernel(ks, "-G build");
  for (const auto& [type, elem] : {std::pair<const char*, int>{"float", 4}, {"__nv_bfloat16", 2}}) {
    const KernelInfo* w = find_kernel(ks, std::string("layernorm_backward_kernel<") + type + ", true>");
    const KernelInfo* b = find_kernel(ks, std::string("layernorm_backward_kernel<") + type + ", false>");
    ASSERT_TRUE(w && b) << type;
    check_layernorm_plan(elem, w->limits(), b->limits(), kSmemOptinSm90, std::string("-G build, ") + type);
    // The warp kernel of a -G build has static shared memory (see the top):
    // exactly what the old plan's 8 x 6 KB at C = 768 could not afford.
    if (elem == 4 && w->static_smem > 0) {
      EXPECT_FALSE(old_plan_fits(768, 4, w->limits(), b->limits()));
    }
  }
}
#endif

// --- on a GPU: the driver agrees, and the plan's boundaries launch ----------------------

#if KILN_WITH_CUDA && defined(KILN_KERNELS_LIB)
TEST(LaunchLimitsGpu, ParsedLimitsMatchTheDriver) {
  KILN_REQUIRE_GPU();
  int checked = 0;
  for (const Cubin& c : cubins_of(KILN_KERNELS_LIB)) {
    cudaLibrary_t lib = nullptr;
    KILN_CUDA_CHECK(cudaLibraryLoadData(&lib, c.bytes.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
    for (const KernelInfo& k : parse_cubin(c.bytes, c.source)) {
      SCOPED_TRACE(k.source + ": " + k.name);
      cudaKernel_t kernel = nullptr;
      KILN_CUDA_CHECK(cudaLibraryGetKernel(&kernel, lib, k.mangled.c_str()));
      cudaFuncAttributes a{};
      KILN_CUDA_CHECK(cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(kernel)));
      EXPECT_EQ(a.sharedSizeBytes, k.static_smem);
      EXPECT_EQ(a.numRegs, k.regs);
      EXPECT_EQ(a.maxThreadsPerBlock, k.max_threads());
      ++checked;
    }
    KILN_CUDA_CHECK(cudaLibraryUnload(lib));
  }
  EXPECT_GE(checked, 60);
  int dev = 0, optin = 0, reserved = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev));
  EXPECT_EQ(static_cast<size_t>(optin), kSmemOptinSm90);
  EXPECT_EQ(static_cast<size_t>(reserved), kReservedSmem);
}

// Every C where the plan changes shape (warp/block, opt-in, shared or global
// accumulators), and its neighbour, launched and compared with the CPU.
template <typename H>
void backward_at_boundaries(const std::string& type) {
  const int elem = static_cast<int>(sizeof(H));
  const KernelInfo* w = find_kernel(built_kernels(), "layernorm_backward_kernel<" + type + ", true>");
  const KernelInfo* b = find_kernel(built_kernels(), "layernorm_backward_kernel<" + type + ", false>");
  ASSERT_TRUE(w && b);
  std::set<int64_t> Cs = {1, 768, 6143, 6144, 6145};
  LayerNormBackwardPlan prev = plan_layernorm_backward(1, elem, w->limits(), b->limits(), kSmemOptinSm90);
  for (int64_t C = 2; C <= 70000; ++C) {
    const LayerNormBackwardPlan p = plan_layernorm_backward(C, elem, w->limits(), b->limits(), kSmemOptinSm90);
    if (p.warp != prev.warp || p.opt_in != prev.opt_in || p.smem_acc != prev.smem_acc || p.block != prev.block) {
      Cs.insert(C - 1);
      Cs.insert(C);
    }
    prev = p;
  }
  for (int64_t C : Cs) {
    const int64_t rows = 3;
    const std::string what = type + " C = " + std::to_string(C);
    const std::vector<float> x = test::representable<H>(test::random_uniform(rows * C, 11 + C, -2.0f, 2.0f));
    const std::vector<float> dy = test::representable<H>(test::random_uniform(rows * C, 12 + C));
    const std::vector<float> wt = test::random_uniform(C, 13 + C, 0.5f, 1.5f), bias(C, 0.0f);
    std::vector<float> y(rows * C), mean(rows), rstd(rows), want_dx(rows * C), want_dw(C, 0.0f), want_db(C, 0.0f);
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), wt.data(), bias.data(), rows, C, 1e-5f);
    layernorm_backward_cpu<float>(want_dx.data(), want_dw.data(), want_db.data(), dy.data(), x.data(), wt.data(),
                                  mean.data(), rstd.data(), nullptr, rows, C);
    test::OffsetBuffer<H> d_x(test::to_storage<H>(x), 0), d_dy(test::to_storage<H>(dy), 0), d_dx(rows * C, 0);
    test::DeviceBuffer<float> d_w(wt), d_mean(mean), d_rstd(rstd), d_dw(std::vector<float>(C, 0.0f)),
        d_db(std::vector<float>(C, 0.0f));
    test::DeviceBuffer<float> scratch(static_cast<size_t>(layernorm_backward_scratch_floats(rows, C)));
    layernorm_backward(d_dx.get(), d_dw.get(), d_db.get(), scratch.get(), d_dy.get(), d_x.get(), d_w.get(),
                       d_mean.get(), d_rstd.get(), nullptr, rows, C, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    const test::Tolerance tol = std::is_same_v<H, float> ? test::Tolerance{1e-4, 1e-5} : test::storage_tolerance<H>();
    EXPECT_TRUE(test::all_close(test::to_f32(d_dx.to_host()), want_dx, tol, "dx " + what));
    EXPECT_TRUE(test::all_close(d_dw.to_host(), want_dw, test::Tolerance{1e-4, 1e-4}, "dweight " + what));
  }
}

TEST(LaunchLimitsGpu, LayerNormBackwardLaunchesAtEveryPlanBoundary) {
  KILN_REQUIRE_GPU();
  backward_at_boundaries<float>("float");
  backward_at_boundaries<bf16>("__nv_bfloat16");
}
#else
TEST(LaunchLimitsGpu, ParsedLimitsMatchTheDriver) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
