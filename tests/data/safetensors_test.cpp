#include "data/safetensors.h"

#include "data/safetensors_tensor.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/temp_dir.h"
#include "runtime/tensor.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static std::string slurp(const std::string& p) { return test::read_file(p); }
  static void put(const std::string& p, const std::string& s) { test::write_file(p, s); }
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
};

// Deterministic filler bytes (a different pattern per tensor).
std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

// A file made by hand: 8-byte little-endian length, header text, data.
std::string raw_file(const std::string& header, const std::string& data, uint64_t claimed_len = UINT64_MAX) {
  uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s + header + data;
}

TEST(Safetensors, DtypeNamesAndSizes) {
  struct Row {
    StDType t;
    const char* name;
    size_t size;
  } rows[] = {{StDType::f64, "F64", 8}, {StDType::f32, "F32", 4}, {StDType::f16, "F16", 2},
              {StDType::bf16, "BF16", 2}, {StDType::i64, "I64", 8}, {StDType::i32, "I32", 4},
              {StDType::u16, "U16", 2}, {StDType::u8, "U8", 1}};
  for (const Row& r : rows) {
    EXPECT_STREQ(st_dtype_name(r.t), r.name);
    EXPECT_EQ(st_dtype_size(r.t), r.size) << r.name;
    StDType back;
    ASSERT_TRUE(st_dtype_parse(r.name, &back)) << r.name;
    EXPECT_EQ(back, r.t);
  }
  StDType t;
  EXPECT_FALSE(st_dtype_parse("f32", &t));  // the format's names are upper case
  EXPECT_FALSE(st_dtype_parse("C64", &t));
}

TEST_F(SafetensorsTest, RoundTripEveryDtypeAndShape) {
  const StDType dtypes[] = {StDType::f64, StDType::f32, StDType::f16, StDType::bf16,
                            StDType::i64, StDType::i32, StDType::u16, StDType::u8};
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {1}, {7}, {2, 3}, {3, 0, 2}, {2, 1, 3, 1, 2}};
  std::vector<StTensorView> views;
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(64);
  uint32_t seed = 1;
  for (StDType t : dtypes) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      int64_t numel = 1;
      for (int64_t d : shapes[s]) numel *= d;
      storage.push_back(pattern(static_cast<size_t>(numel) * st_dtype_size(t), seed++));
      StTensorView v;
      v.name = std::string("t.") + st_dtype_name(t) + "." + std::to_string(s);
      v.dtype = t;
      v.shape = shapes[s];
      v.data = storage.back().empty() ? nullptr : storage.back().data();
      v.nbytes = storage.back().size();
      views.push_back(v);
    }
  }
  // Reverse so the writer has to sort.
  std::reverse(views.begin(), views.end());
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"kiln.step", "12"}, {"note", "ünïcødé \"quoted\""}};
  uint64_t written = write_safetensors(path("all.safetensors"), views, meta);
  EXPECT_EQ(written, fs::file_size(path("all.safetensors")));

  SafetensorsFile f = read_safetensors(path("all.safetensors"));
  EXPECT_EQ(f.path, path("all.safetensors"));
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), views.size());
  for (const StTensorView& v : views) {
    const StTensor& t = f.at(v.name);
    EXPECT_EQ(t.dtype, v.dtype) << v.name;
    EXPECT_EQ(t.shape, v.shape) << v.name;
    ASSERT_EQ(t.nbytes, v.nbytes) << v.name;
    if (v.nbytes) {
      EXPECT_EQ(std::memcmp(t.data, v.data, v.nbytes), 0) << v.name;
    }
    int64_t numel = 1;
    for (int64_t d : v.shape) numel *= d;
    EXPECT_EQ(t.numel(), numel) << v.name;
  }
  // A 0-d tensor holds one element; an empty one none.
  EXPECT_EQ(f.at("t.F64.0").numel(), 1);
  EXPECT_EQ(f.at("t.F64.0").nbytes, 8u);
  EXPECT_EQ(f.at("t.U8.5").nbytes, 0u);
}

TEST_F(SafetensorsTest, LayoutIsSortedPaddedAndLittleEndian) {
  float a[2] = {1.0f, -2.0f};
  uint8_t b[3] = {7, 8, 9};
  std::vector<StTensorView> views = {{"zeta", StDType::u8, {3}, b, 3}, {"alpha", StDType::f32, {2}, a, 8}};
  write_safetensors(path("l.safetensors"), views);
  std::string s = slurp(path("l.safetensors"));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(s[i])) << (8 * i);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  std::string header = s.substr(8, n);
  EXPECT_EQ(header,
            std::string("{\"alpha\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"zeta\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}") +
                std::string((8 - (header.find_last_of('}') + 1) % 8) % 8, ' '));
  ASSERT_EQ(s.size(), 8 + n + 11);
  EXPECT_EQ(std::memcmp(s.data() + 8 + n, a, 8), 0);
  EXPECT_EQ(s.substr(8 + n + 8), "\x07\x08\x09");
  // No metadata given: no __metadata__ key.
  EXPECT_EQ(header.find("__metadata__"), std::string::npos);
  // Nothing left behind but the file.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST(Safetensors, WriterRejectsCallerBugs) {
  float x[4] = {};
  EXPECT_THROW(serialize_safetensors_header({{"a", StDType::f32, {2}, x, 12}}), Error);           // nbytes mismatch
  EXPECT_THROW(serialize_safetensors_header({{"a", StDType::f32, {-1}, x, 0}}), Error);           // negative dim
  EXPECT_THROW(serialize_safetensors_header({{"a", StDType::f32, {1}, x, 4}, {"a", StDType::f32, {1}, x, 4}}),
               Error);                                                                               // duplicate
  EXPECT_THROW(serialize_safetensors_header({{"", StDType::f32, {1}, x, 4}}), Error);              // empty name
  EXPECT_THROW(serialize_safetensors_header({{"__metadata__", StDType::f32, {1}, x, 4}}), Error);  // reserved
  EXPECT_THROW(serialize_safetensors_header({{"a", StDType::f32, {1}, nullptr, 4}}), Error);       // no data
  EXPECT_THROW(serialize_safetensors_header({{"bad\xff", StDType::f32, {1}, x, 4}}), Error);       // not UTF-8
}

TEST_F(SafetensorsTest, EmptyFileWithOnlyMetadataRoundTrips) {
  write_safetensors(path("e.safetensors"), {}, {{"k", "v"}});
  SafetensorsFile f = read_safetensors(path("e.safetensors"));
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.metadata.at("k"), "v");
  write_safetensors(path("e2.safetensors"), {});
  EXPECT_TRUE(read_safetensors(path("e2.safetensors")).tensors.empty());
}

TEST_F(SafetensorsTest, MissingTensorLookupNamesFileAndTensor) {
  float x = 1.0f;
  write_safetensors(path("m.safetensors"), {{"w", StDType::f32, {}, &x, 4}});
  SafetensorsFile f = read_safetensors(path("m.safetensors"));
  try {
    f.at("layers.0.weight");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("layers.0.weight"), std::string::npos);
  }
}

// Every hostile header is an InputError naming the file, the tensor (when
// there is one) and the problem.
TEST_F(SafetensorsTest, HostileFilesAreInputErrorsNamingFileAndTensor) {
  const std::string ok_entry = "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  const std::string eight(8, '\0');
  struct Case {
    const char* label;
    std::string bytes;
    std::vector<std::string> expect;  // substrings of the message (the path is always checked)
  };
  std::string deep = "{\"w\":{\"dtype\":\"F32\",\"shape\":[" + std::string(100000, '[') + "]}}";
  std::vector<Case> cases = {
      {"empty file", "", {"too short"}},
      {"short file", "abc", {"too short"}},
      {"absurd header length", raw_file("{}", "", 1ull << 40), {"absurd"}},
      {"header past end", raw_file("{}", "", 1000), {"past the end"}},
      {"huge length u64", raw_file("{}", "", UINT64_MAX - 1), {"absurd"}},
      {"malformed json", raw_file("{\"w\": {\"dtype\": ", ""), {"not valid JSON"}},
      {"trailing garbage", raw_file("{} xyz", ""), {"not valid JSON"}},
      {"not an object", raw_file("[1,2]   ", ""), {"not a JSON object"}},
      {"deep nesting bomb", raw_file(deep, ""), {"nested deeper"}},
      {"entry not object", raw_file("{\"w\":[1,2]}", ""), {"'w'", "not an object"}},
      {"unknown dtype", raw_file("{\"w\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", eight),
       {"'w'", "unknown dtype 'C64'"}},
      {"dtype not string", raw_file("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "unknown dtype 4"}},
      {"missing shape", raw_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "needs dtype, shape and data_offsets"}},
      {"extra key", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", "1234"),
       {"'w'", "unexpected key 'x'"}},
      {"negative dim", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "not a non-negative integer"}},
      {"float dim", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "not a non-negative integer"}},
      {"shape overflow",
       raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "overflows int64"}},
      {"bytes overflow",
       raw_file("{\"w\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", "1234"),
       {"'w'", "overflows"}},
      {"offsets not pair", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "1234"),
       {"'w'", "not [begin, end]"}},
      {"offsets negative", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", "1234"),
       {"'w'", "not [begin, end]"}},
      {"offsets reversed", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", "1234"),
       {"'w'", "begin after end"}},
      {"offsets past data", raw_file("{" + ok_entry + "}", "1234"), {"'w'", "run past the data"}},
      {"offsets huge", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551612,"
                                "18446744073709551615]}}",
                                "1234"),
       {"'w'", "not [begin, end]"}},
      {"size mismatch", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", eight),
       {"'w'", "hold 8 bytes but F32 (3,) needs 12"}},
      {"overlap",
       raw_file("{" + ok_entry + ",\"v\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", eight),
       {"overlap"}},
      {"gap", raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", eight),
       {"'w'", "belong to no tensor"}},
      {"trailing bytes", raw_file("{" + ok_entry + "}", eight + "xx"), {"'w'", "belong to no tensor"}},
      {"data without tensors", raw_file("{}", "xx"), {"belong to no tensor"}},
      {"duplicate tensor", raw_file("{" + ok_entry + "," + ok_entry + "}", eight), {"'w'", "appears twice"}},
      {"duplicate key in entry",
       raw_file("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,8]}}", eight),
       {"'w'", "'dtype' appears twice"}},
      {"metadata not strings", raw_file("{\"__metadata__\":{\"a\":1}}", ""), {"__metadata__", "'a'"}},
      {"metadata not object", raw_file("{\"__metadata__\":[]}", ""), {"__metadata__"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    std::string p = path("hostile_" + std::to_string(i++) + ".safetensors");
    put(p, c.bytes);
    try {
      read_safetensors(p);
      ADD_FAILURE() << c.label << ": expected InputError";
    } catch (const InputError& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(p), std::string::npos) << c.label << ": " << m;
      for (const std::string& want : c.expect) EXPECT_NE(m.find(want), std::string::npos) << c.label << ": " << m;
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.label << ": wrong exception type: " << e.what();
    }
  }
}

TEST_F(SafetensorsTest, MissingFileAndDirectoryAreInputErrors) {
  EXPECT_THROW(read_safetensors(path("nope.safetensors")), InputError);
  EXPECT_THROW(read_safetensors(dir_), InputError);
}

// Another writer's layout: unsorted offsets, unpadded header, metadata last.
TEST_F(SafetensorsTest, ReadsUnpaddedHeaderWithOffsetsInAnyOrder) {
  std::string data;
  int32_t vals[2] = {-5, 1 << 30};
  data.append("\x01\x02\x03", 3);
  data.append(reinterpret_cast<const char*>(vals), 8);
  std::string header =
      "{\"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [3, 11]},"
      " \"a\": {\"dtype\": \"U8\", \"shape\": [3], \"data_offsets\": [0, 3]}, \"__metadata__\": {\"x\": \"y\"}}";
  put(path("other.safetensors"), raw_file(header, data));
  SafetensorsFile f = read_safetensors(path("other.safetensors"));
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.at("a").bytes(), (std::vector<uint8_t>{1, 2, 3}));
  int32_t got[2];
  std::memcpy(got, f.at("b").data, 8);
  EXPECT_EQ(got[0], -5);
  EXPECT_EQ(got[1], 1 << 30);
  EXPECT_EQ(f.metadata.at("x"), "y");
}

// --- Compatibility with Python readers ------------------------------------

// The first interpreter that can import every module given: the system's
// /usr/bin/python3 (Debian's numpy/torch, quick to start), then `python3` on
// PATH (a pyenv or venv interpreter, where pip's safetensors may live).
// Empty when none can.
std::string find_python(const std::vector<std::string>& modules) {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    std::string cmd = std::string(py) + " -c 'import sys";
    for (const std::string& m : modules) cmd += ", " + m;
    cmd += "' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

// Writes the file both Python checks read: known values in several dtypes.
void write_known_file(const std::string& p) {
  static float a[6] = {0, 1, 2, 3, 4, 5};
  static int64_t b[2] = {-1, int64_t(1) << 40};
  static uint16_t c[2] = {0x3fc0, 0xc000};  // bf16 1.5, -2.0
  static double e = 3.25;
  static uint16_t h[1] = {0x3c00};  // f16 1.0
  write_safetensors(p,
                    {{"a", StDType::f32, {2, 3}, a, sizeof a},
                     {"b", StDType::i64, {2}, b, sizeof b},
                     {"c", StDType::bf16, {2}, c, sizeof c},
                     {"d", StDType::u8, {0}, nullptr, 0},
                     {"e", StDType::f64, {}, &e, sizeof e},
                     {"h", StDType::f16, {1}, h, sizeof h}},
                    {{"format", "pt"}});
}

// An independent reader written from the format description (json + numpy),
// so a misreading of the spec on our side (offset base, endianness, padding)
// would show up. Runs wherever python3 and numpy are installed.
TEST_F(SafetensorsTest, PythonNumpyReaderAgrees) {
  std::string py = find_python({"numpy"});
  if (py.empty()) GTEST_SKIP() << "python3 with numpy not installed";
  write_known_file(path("py.safetensors"));
  std::string script = path("check.py");
  put(script,
      "import json, struct, sys\n"
      "import numpy as np\n"
      "raw = open(sys.argv[1], 'rb').read()\n"
      "n = struct.unpack('<Q', raw[:8])[0]\n"
      "assert (8 + n) % 8 == 0\n"
      "h = json.loads(raw[8:8 + n])\n"
      "assert h['__metadata__'] == {'format': 'pt'}\n"
      "data = raw[8 + n:]\n"
      "dt = {'F32': '<f4', 'I64': '<i8', 'BF16': '<u2', 'U8': 'u1', 'F64': '<f8', 'F16': '<f2'}\n"
      "def get(k):\n"
      "    e = h[k]; b, en = e['data_offsets']\n"
      "    return np.frombuffer(data[b:en], dtype=dt[e['dtype']]).reshape(e['shape'])\n"
      "assert (get('a') == np.arange(6, dtype=np.float32).reshape(2, 3)).all()\n"
      "assert get('b').tolist() == [-1, 2**40]\n"
      "bf = (get('c').astype(np.uint32) << 16).view(np.float32)\n"
      "assert bf.tolist() == [1.5, -2.0]\n"
      "assert get('d').shape == (0,)\n"
      "assert get('e').shape == () and float(get('e')) == 3.25\n"
      "assert get('h').tolist() == [1.0]\n"
      "assert h['h']['data_offsets'][1] == len(data)\n"
      "print('ok')\n");
  std::string cmd = py + " " + script + " " + path("py.safetensors");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// The real `safetensors` package (Hugging Face). Debian 12 does not package
// it; the test runs wherever it is installed (e.g. with pip's torch).
TEST_F(SafetensorsTest, PythonSafetensorsPackageReadsOurFile) {
  std::string py = find_python({"safetensors"});
  if (py.empty()) GTEST_SKIP() << "python3 module safetensors not installed (Debian 12 does not package it)";
  write_known_file(path("hf.safetensors"));
  std::string py_torch = find_python({"torch", "safetensors.torch"});
  bool torch = !py_torch.empty();
  if (torch) py = py_torch;
  std::string script = path("hf.py");
  if (torch) {
    put(script,
        "import sys, torch\n"
        "from safetensors import safe_open\n"
        "from safetensors.torch import load_file\n"
        "t = load_file(sys.argv[1])\n"
        "assert t['a'].dtype == torch.float32 and t['a'].tolist() == [[0,1,2],[3,4,5]]\n"
        "assert t['b'].dtype == torch.int64 and t['b'].tolist() == [-1, 2**40]\n"
        "assert t['c'].dtype == torch.bfloat16 and t['c'].float().tolist() == [1.5, -2.0]\n"
        "assert t['d'].shape == (0,) and t['e'].shape == () and t['e'].item() == 3.25\n"
        "assert t['h'].dtype == torch.float16 and t['h'].tolist() == [1.0]\n"
        "with safe_open(sys.argv[1], 'pt') as f: assert f.metadata() == {'format': 'pt'}\n"
        "print('ok')\n");
  } else {
    put(script,
        "import sys\n"
        "from safetensors import safe_open\n"
        "with safe_open(sys.argv[1], 'np') as f:\n"
        "    assert f.metadata() == {'format': 'pt'}\n"
        "    assert f.get_tensor('a').tolist() == [[0,1,2],[3,4,5]]\n"
        "    assert f.get_tensor('b').tolist() == [-1, 2**40]\n"
        "    assert f.get_tensor('e').shape == () and float(f.get_tensor('e')) == 3.25\n"
        "print('ok')\n");
  }
  std::string cmd = py + " " + script + " " + path("hf.safetensors");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}


// --- kiln::Tensor helpers -------------------------------------------------

std::vector<uint8_t> tensor_bytes(const Tensor& t) {
  Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  const uint8_t* p = static_cast<const uint8_t*>(h.raw());
  return std::vector<uint8_t>(p, p + h.nbytes());
}

TEST(SafetensorsTensor, DtypeMapping) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::u16, DType::u8, DType::f64}) {
    EXPECT_EQ(to_kiln_dtype(to_st_dtype(t), "x"), t);
    EXPECT_EQ(st_dtype_size(to_st_dtype(t)), dtype_size(t));
  }
  EXPECT_THROW(to_kiln_dtype(StDType::i64, "x"), InputError);
}

TEST_F(SafetensorsTest, TensorRoundTripEveryKilnDtype) {
  Device cpu = Device::cpu();
  std::vector<NamedTensor> ts = {
      {"w.f32", Tensor::from_vector({1.5f, -2.0f, 3.25f, 0.0f, 1e-8f, -7.0f}, Shape{2, 3}, DType::f32, cpu)},
      {"w.bf16", Tensor::from_vector({1.5f, -2.0f, 3.25f}, Shape{3}, DType::bf16, cpu)},
      {"w.f64", Tensor::from_vector({0.1f, 0.2f}, Shape{2, 1}, DType::f64, cpu)},
      {"i.i32", Tensor::from_vector(std::vector<int32_t>{-3, 0, 1 << 30}, Shape{3}, cpu)},
      {"i.u16", Tensor::from_vector({1.0f, 65535.0f}, Shape{2}, DType::u16, cpu)},
      {"i.u8", Tensor::from_vector({7.0f}, Shape{1, 1, 1, 1, 1}, DType::u8, cpu)},
      {"scalar", Tensor::full(Shape{}, 4.5, DType::f32, cpu)},
      {"empty", Tensor::empty(Shape{0, 3}, DType::f32, cpu)},
  };
  write_named_tensors(path("t.safetensors"), ts, {{"format", "pt"}});
  SafetensorsFile f = read_safetensors(path("t.safetensors"));
  ASSERT_EQ(f.tensors.size(), ts.size());
  for (const auto& [name, t] : ts) {
    Tensor back = to_tensor(f.at(name), cpu, name);
    EXPECT_EQ(back.dtype(), t.dtype()) << name;
    EXPECT_EQ(back.shape(), t.shape()) << name;
    EXPECT_EQ(tensor_bytes(back), tensor_bytes(t)) << name;
  }
  EXPECT_EQ(f.at("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(f.at("empty").nbytes, 0u);
}

TEST_F(SafetensorsTest, LoadIntoChecksShapeConvertsFloatsAndNamesTensor) {
  Device cpu = Device::cpu();
  Tensor w16 = Tensor::from_vector({1.5f, -2.0f, 0.25f, 8.0f}, Shape{2, 2}, DType::bf16, cpu);
  Tensor idx = Tensor::from_vector(std::vector<int32_t>{1, 2}, Shape{2}, cpu);
  static int64_t big[1] = {5};
  write_named_tensors(path("l.safetensors"), {{"layers.0.weight", w16}, {"ids", idx}});
  // An I64 tensor beside them (kiln has no i64 tensors).
  SafetensorsFile f = read_safetensors(path("l.safetensors"));

  // bf16 in the file, f32 parameter: converted.
  Tensor p = Tensor::zeros(Shape{2, 2}, DType::f32, cpu, "layers.0.weight");
  load_into(f, "layers.0.weight", p);
  EXPECT_EQ(p.to_vector(), (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}));

  auto expect_input_error = [&](auto fn, std::vector<std::string> want) {
    try {
      fn();
      ADD_FAILURE() << "expected InputError mentioning " << want[0];
    } catch (const InputError& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(path("l.safetensors")), std::string::npos) << m;
      for (const auto& w : want) EXPECT_NE(m.find(w), std::string::npos) << m;
    }
  };
  Tensor wrong = Tensor::zeros(Shape{4}, DType::f32, cpu);
  expect_input_error([&] { load_into(f, "layers.0.weight", wrong); }, {"'layers.0.weight'", "(2, 2)", "(4)"});
  Tensor fidx = Tensor::zeros(Shape{2}, DType::f32, cpu);
  expect_input_error([&] { load_into(f, "ids", fidx); }, {"'ids'", "I32", "f32"});
  expect_input_error([&] { load_into(f, "layers.1.weight", p); }, {"'layers.1.weight'"});

  // load_tensors: strict rejects a file tensor no parameter takes.
  Tensor q = Tensor::zeros(Shape{2, 2}, DType::f32, cpu);
  expect_input_error([&] { load_tensors(f, {{"layers.0.weight", q}}); }, {"'ids'", "matches no parameter"});
  Tensor q2 = Tensor::zeros(Shape{2, 2}, DType::f32, cpu);
  load_tensors(f, {{"layers.0.weight", q2}}, /*strict=*/false);
  EXPECT_EQ(q2.to_vector(), (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}));  // written through the shared storage

  write_safetensors(path("i64.safetensors"), {{"pos", StDType::i64, {1}, big, 8}});
  SafetensorsFile g = read_safetensors(path("i64.safetensors"));
  EXPECT_THROW(to_tensor(g.at("pos"), cpu, "pos"), InputError);
  std::vector<int64_t> six(6, 1);
  static uint8_t one = 1;
  write_safetensors(path("6d.safetensors"), {{"x", StDType::u8, six, &one, 1}});
  EXPECT_THROW(to_tensor(read_safetensors(path("6d.safetensors")).at("x"), cpu, "x"), InputError);
}

TEST_F(SafetensorsTest, SafetensorsGpuRoundTripFromDevice) {
  KILN_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Tensor w = Tensor::from_vector({1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f}, Shape{3, 2}, DType::f32, gpu);
  Tensor b = Tensor::from_vector({0.5f, -0.5f}, Shape{2}, DType::bf16, gpu);
  write_named_tensors(path("g.safetensors"), {{"w", w}, {"b", b}});
  SafetensorsFile f = read_safetensors(path("g.safetensors"));
  Tensor w2 = to_tensor(f.at("w"), gpu, "w");
  EXPECT_TRUE(w2.device().is_cuda());
  EXPECT_EQ(w2.to_vector(), w.to_vector());
  Tensor b32 = Tensor::zeros(Shape{2}, DType::f32, gpu);
  load_into(f, "b", b32);  // bf16 file into an f32 device tensor
  EXPECT_EQ(b32.to_vector(), (std::vector<float>{0.5f, -0.5f}));
}

}  // namespace
}  // namespace kiln
