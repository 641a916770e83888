#include "data/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/atomic_file.h"
#include "runtime/error.h"

// The format is little-endian; so are x86-64 and AArch64 Linux, which lets us
// write tensor bytes straight from memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace kiln {

namespace {

using json = nlohmann::json;

// Header nesting: top object (1) > tensor entry or __metadata__ (2) > shape /
// data_offsets arrays (3). Anything deeper is hostile; stopping at the first
// level beyond keeps a "[[[[..." bomb from costing anything.
constexpr int kMaxHeaderDepth = 3;

// Thrown from inside the JSON parser's callback to stop it at once.
struct HeaderReject {
  std::string why;
};

std::string sq(const std::string& s) { return "'" + s + "'"; }

// numel of a shape with overflow and sign checks; false on failure.
bool checked_numel(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, d, &n)) return false;
  }
  *out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// Reads a JSON unsigned integer that fits in int64; false for anything else
// (negative numbers, floats, strings, values above 2^63-1).
bool as_int64(const json& v, int64_t* out) {
  if (!v.is_number_unsigned()) {
    // nlohmann stores non-negative literals as unsigned; a signed integer here
    // can only be negative.
    return false;
  }
  uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = static_cast<int64_t>(u);
  return true;
}

}  // namespace

size_t st_dtype_size(StDType t) {
  switch (t) {
    case StDType::f64: return 8;
    case StDType::f32: return 4;
    case StDType::f16: return 2;
    case StDType::bf16: return 2;
    case StDType::i64: return 8;
    case StDType::i32: return 4;
    case StDType::u16: return 2;
    case StDType::u8: return 1;
  }
  KILN_CHECK(false, "unknown safetensors dtype " << static_cast<int>(t));
}

const char* st_dtype_name(StDType t) {
  switch (t) {
    case StDType::f64: return "F64";
    case StDType::f32: return "F32";
    case StDType::f16: return "F16";
    case StDType::bf16: return "BF16";
    case StDType::i64: return "I64";
    case StDType::i32: return "I32";
    case StDType::u16: return "U16";
    case StDType::u8: return "U8";
  }
  return "?";
}

bool st_dtype_parse(const std::string& name, StDType* out) {
  static const StDType all[] = {StDType::f64, StDType::f32, StDType::f16, StDType::bf16,
                                StDType::i64, StDType::i32, StDType::u16, StDType::u8};
  for (StDType t : all) {
    if (name == st_dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

int64_t StTensor::numel() const {
  int64_t n = 0;
  KILN_CHECK(checked_numel(shape, &n), "StTensor with invalid shape " << shape_str(shape));
  return n;
}

const StTensor& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::ostringstream os;
    os << path << ": no tensor " << sq(name) << " (the file has " << tensors.size() << " tensors";
    if (!tensors.empty()) os << ", e.g. " << sq(tensors.begin()->first);
    os << ")";
    throw InputError(os.str());
  }
  return it->second;
}

// ---------------------------------------------------------------------------
// Writing

std::string serialize_safetensors_header(const std::vector<StTensorView>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  std::vector<const StTensorView*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StTensorView* a, const StTensorView* b) { return a->name < b->name; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const StTensorView& t = *order[i];
    KILN_CHECK(!t.name.empty(), "safetensors: a tensor has an empty name");
    KILN_CHECK(t.name != "__metadata__", "safetensors: '__metadata__' is reserved and cannot name a tensor");
    KILN_CHECK(i == 0 || order[i - 1]->name != t.name, "safetensors: tensor " << sq(t.name) << " given twice");
    int64_t numel = 0;
    KILN_CHECK(checked_numel(t.shape, &numel),
               "safetensors: tensor " << sq(t.name) << " has invalid shape " << shape_str(t.shape));
    uint64_t need = 0;
    KILN_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), st_dtype_size(t.dtype), &need) &&
                   need == t.nbytes,
               "safetensors: tensor " << sq(t.name) << " " << st_dtype_name(t.dtype) << " " << shape_str(t.shape)
                                      << " needs " << need << " bytes but " << t.nbytes << " were given");
    KILN_CHECK(t.data != nullptr || t.nbytes == 0, "safetensors: tensor " << sq(t.name) << " has no data pointer");
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = st_dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.nbytes};
    header[t.name] = std::move(entry);
    offset += t.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    // The only way dump fails here is a name or metadata string that is not UTF-8.
    throw Error(std::string("safetensors: cannot encode header (names and metadata must be UTF-8): ") + e.what());
  }
  // Pad so that 8 + N is a multiple of 8: the data starts aligned, which lets
  // readers that mmap the file view F64/I64 tensors in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

uint64_t write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::string header = serialize_safetensors_header(tensors, metadata);
  std::vector<const StTensorView*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StTensorView* a, const StTensorView* b) { return a->name < b->name; });

  AtomicFile f(path);
  uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  f.write(len, 8);
  f.write(header);
  for (const StTensorView* t : order) f.write(t->data, t->nbytes);
  f.commit();
  return f.bytes_written();
}

// ---------------------------------------------------------------------------
// Reading

SafetensorsFile read_safetensors(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    throw InputError("cannot open safetensors file '" + path + "': " + std::strerror(err));
  }
  struct stat st;
  if (::fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    std::fclose(f);
    throw InputError("'" + path + "' is not a regular file (expected a safetensors file)");
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  // Check the length prefix before allocating the whole file, so the message
  // for a file that is not safetensors at all says so plainly.
  if (size < 8) {
    std::fclose(f);
    throw InputError(path + ": file is " + std::to_string(size) +
                     " bytes, too short for a safetensors file (8-byte header length first)");
  }
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(size));
  size_t got = std::fread(bytes->data(), 1, bytes->size(), f);
  bool err = std::ferror(f) != 0;
  int e = errno;
  std::fclose(f);
  if (err) throw InputError("cannot read '" + path + "': " + std::strerror(e));
  if (got != bytes->size()) {
    throw InputError(path + ": file shrank while being read (" + std::to_string(got) + " of " + std::to_string(size) +
                     " bytes)");
  }
  return parse_safetensors(std::move(bytes), path);
}

SafetensorsFile parse_safetensors(std::shared_ptr<const std::vector<uint8_t>> bytes, const std::string& what) {
  KILN_CHECK(bytes != nullptr, "parse_safetensors: null buffer for " << what);
  const uint64_t size = bytes->size();
  const uint8_t* p = bytes->data();
  auto fail = [&](const std::string& msg) -> InputError { return InputError(what + ": " + msg); };
  auto fail_tensor = [&](const std::string& name, const std::string& msg) -> InputError {
    return InputError(what + ": tensor " + sq(name) + ": " + msg);
  };

  if (size < 8) throw fail("file is " + std::to_string(size) + " bytes, too short for a safetensors file");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(p[i]) << (8 * i);
  if (n > kSafetensorsMaxHeader) {
    throw fail("header length " + std::to_string(n) + " is absurd (limit " + std::to_string(kSafetensorsMaxHeader) +
               " bytes); this is not a safetensors file or it is corrupt");
  }
  if (n > size - 8) {
    throw fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
               " bytes); the file is truncated or not safetensors");
  }
  if (n < 2) throw fail("header length " + std::to_string(n) + " is too short for a JSON object");
  const char* hbegin = reinterpret_cast<const char*>(p + 8);
  const char* hend = hbegin + n;
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  // Parse with a callback that rejects deep nesting and duplicate keys (which
  // nlohmann would otherwise resolve silently, last one wins).
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string dup_context;                  // tensor name the duplicate key sits in
  std::vector<std::string> path_keys;       // key leading to each open object
  std::string last_key;
  json header;
  try {
    header = json::parse(
        hbegin, hend,
        [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
          switch (ev) {
            case json::parse_event_t::object_start:
            case json::parse_event_t::array_start:
              if (depth >= kMaxHeaderDepth) {
                std::string where = path_keys.size() >= 2 ? "tensor " + sq(path_keys[1]) + ": " : "";
                throw HeaderReject{where + "header JSON is nested deeper than a safetensors header"};
              }
              if (ev == json::parse_event_t::object_start) {
                path_keys.push_back(keys.empty() ? std::string() : last_key);
                keys.emplace_back();
              }
              break;
            case json::parse_event_t::object_end:
              if (!keys.empty()) keys.pop_back();
              if (!path_keys.empty()) path_keys.pop_back();
              break;
            case json::parse_event_t::key: {
              last_key = parsed.get<std::string>();
              if (!keys.back().insert(last_key).second) {
                if (keys.size() == 1) throw HeaderReject{"tensor " + sq(last_key) + ": name appears twice in the header"};
                throw HeaderReject{"tensor " + sq(path_keys.back()) + ": key " + sq(last_key) +
                                   " appears twice"};
              }
              break;
            }
            default:
              break;
          }
          return true;
        });
  } catch (const HeaderReject& r) {
    throw fail(r.why);
  } catch (const json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");

  SafetensorsFile out;
  out.path = what;
  out.buffer = bytes;

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__ key " + sq(m.key()) + " is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) throw fail_tensor(name, "entry is not an object with dtype, shape and data_offsets");
    for (auto k = v.begin(); k != v.end(); ++k) {
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        throw fail_tensor(name, "unexpected key " + sq(k.key()) + " (expected dtype, shape, data_offsets)");
    }
    if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw fail_tensor(name, "entry needs dtype, shape and data_offsets");

    StTensor t;
    const json& dt = v["dtype"];
    if (!dt.is_string() || !st_dtype_parse(dt.get<std::string>(), &t.dtype)) {
      throw fail_tensor(name, "unknown dtype " + (dt.is_string() ? sq(dt.get<std::string>()) : dt.dump()) +
                                  " (kiln reads F64, F32, F16, BF16, I64, I32, U16, U8)");
    }
    const json& shape = v["shape"];
    if (!shape.is_array()) throw fail_tensor(name, "shape is not an array");
    for (const json& d : shape) {
      int64_t dim = 0;
      if (!as_int64(d, &dim)) throw fail_tensor(name, "shape entry " + d.dump() + " is not a non-negative integer");
      t.shape.push_back(dim);
    }
    int64_t numel = 0;
    if (!checked_numel(t.shape, &numel)) throw fail_tensor(name, "shape " + shape_str(t.shape) + " overflows int64");
    uint64_t need = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), st_dtype_size(t.dtype), &need))
      throw fail_tensor(name, "shape " + shape_str(t.shape) + " times " + st_dtype_name(t.dtype) + " overflows");

    const json& off = v["data_offsets"];
    int64_t b = 0, e = 0;
    if (!off.is_array() || off.size() != 2 || !as_int64(off[0], &b) || !as_int64(off[1], &e))
      throw fail_tensor(name, "data_offsets " + off.dump() + " is not [begin, end] of non-negative integers");
    if (b > e) throw fail_tensor(name, "data_offsets " + off.dump() + " has begin after end");
    if (static_cast<uint64_t>(e) > data_size) {
      throw fail_tensor(name, "data_offsets " + off.dump() + " run past the data (" + std::to_string(data_size) +
                                  " bytes after the header); the file is truncated or corrupt");
    }
    if (static_cast<uint64_t>(e - b) != need) {
      throw fail_tensor(name, "data_offsets " + off.dump() + " hold " + std::to_string(e - b) + " bytes but " +
                                  st_dtype_name(t.dtype) + " " + shape_str(t.shape) + " needs " + std::to_string(need));
    }
    t.data = p + data_start + b;
    t.nbytes = static_cast<size_t>(need);
    auto ins = out.tensors.emplace(name, std::move(t));
    spans.push_back({static_cast<uint64_t>(b), static_cast<uint64_t>(e), &ins.first->first});
  }

  // The tensors must tile the data exactly: sorted by offset, each begins
  // where the previous ended and the last ends at the end of the file. This
  // rejects overlap (aliasing), gaps and trailing bytes in one pass.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    if (s.begin < at) {
      throw fail_tensor(*s.name, "data_offsets [" + std::to_string(s.begin) + ", " + std::to_string(s.end) +
                                     "] overlap tensor " + sq(*spans[i - 1].name));
    }
    if (s.begin > at) {
      throw fail_tensor(*s.name, "data_offsets [" + std::to_string(s.begin) + ", " + std::to_string(s.end) +
                                     "] leave bytes [" + std::to_string(at) + ", " + std::to_string(s.begin) +
                                     ") that belong to no tensor");
    }
    at = s.end;
  }
  if (at != data_size) {
    std::string msg = std::to_string(data_size - at) + " bytes at the end of the data belong to no tensor";
    if (spans.empty()) throw fail(msg);
    throw fail_tensor(*spans.back().name, "is the last tensor but " + msg);
  }
  return out;
}

}  // namespace kiln
