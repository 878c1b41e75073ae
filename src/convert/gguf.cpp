#include "convert/gguf.h"

#include <cstring>
#include <filesystem>

#include "common/dtype.h"
#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve {
namespace {

enum : uint32_t { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_BF16 = 30 };

// Bytes per block and elements per block of the supported tensor types.
bool type_layout(uint32_t t, uint64_t& block_bytes, uint64_t& block_elems) {
  switch (t) {
    case T_F32: block_bytes = 4, block_elems = 1; return true;
    case T_F16: case T_BF16: block_bytes = 2, block_elems = 1; return true;
    case T_Q4_0: block_bytes = 18, block_elems = 32; return true;
    case T_Q4_1: block_bytes = 20, block_elems = 32; return true;
    case T_Q8_0: block_bytes = 34, block_elems = 32; return true;
    default: return false;
  }
}

class Reader {
 public:
  Reader(std::ifstream& in, const std::string& path, uint64_t size) : in_(in), path_(path), size_(size) {}
  void raw(void* p, size_t n) {
    in_.read(static_cast<char*>(p), static_cast<std::streamsize>(n));
    if (!in_) throw Error(cat("'", path_, "': truncated GGUF header"));
  }
  template <typename T> T get() {
    T v;
    raw(&v, sizeof v);
    return v;
  }
  std::string str() {
    const uint64_t n = get<uint64_t>();
    if (n > size_) throw Error(cat("'", path_, "': corrupt GGUF string length"));
    std::string s(n, '\0');
    raw(s.data(), n);
    // GGUF strings are UTF-8; anything else is a corrupt file (and could not go into the JSON
    // the tokenizer and config are kept as).
    if (!unicode::is_utf8(s)) throw Error(cat("'", path_, "': corrupt GGUF string (not UTF-8)"));
    return s;
  }
  nlohmann::json value(uint32_t type, int depth = 0) {
    switch (type) {
      case 0: return get<uint8_t>();
      case 1: return get<int8_t>();
      case 2: return get<uint16_t>();
      case 3: return get<int16_t>();
      case 4: return get<uint32_t>();
      case 5: return get<int32_t>();
      case 6: return get<float>();
      case 7: return get<uint8_t>() != 0;
      case 8: return str();
      case 9: {
        if (depth > 2) throw Error(cat("'", path_, "': GGUF arrays nested too deep"));
        const uint32_t et = get<uint32_t>();
        const uint64_t n = get<uint64_t>();
        if (n > size_) throw Error(cat("'", path_, "': corrupt GGUF array length"));
        nlohmann::json arr = nlohmann::json::array();
        for (uint64_t i = 0; i < n; ++i) arr.push_back(value(et, depth + 1));
        return arr;
      }
      case 10: return get<uint64_t>();
      case 11: return get<int64_t>();
      case 12: return get<double>();
      default: throw Error(cat("'", path_, "': unknown GGUF metadata type ", type));
    }
  }
  uint64_t pos() { return static_cast<uint64_t>(in_.tellg()); }

 private:
  std::ifstream& in_;
  const std::string& path_;
  uint64_t size_;
};

}  // namespace

// Undoes llama.cpp's reordering of Q/K rows for interleaved RoPE: within each head, GGUF holds rows
// in (pair, 2) order where Hugging Face holds them as (2, half).
std::vector<float> gguf_unpermute_rows(const std::vector<float>& w, int64_t rows, int64_t cols, int heads) {
  std::vector<float> out(w.size());
  const int64_t hd = rows / heads, half = hd / 2;
  for (int h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int two = 0; two < 2; ++two) {
        const int64_t src = h * hd + i * 2 + two;    // GGUF row
        const int64_t dst = h * hd + two * half + i;  // HF row
        std::memcpy(&out[dst * cols], &w[src * cols], cols * sizeof(float));
      }
  return out;
}

const char* gguf_type_name(uint32_t t) {
  switch (t) {
    case T_F32: return "F32";
    case T_F16: return "F16";
    case T_Q4_0: return "Q4_0";
    case T_Q4_1: return "Q4_1";
    case T_Q8_0: return "Q8_0";
    case T_BF16: return "BF16";
    default: return "unsupported";
  }
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

GgufFile::GgufFile(const std::string& path) : path_(path), in_(path, std::ios::binary) {
  if (!in_) throw Error(cat("cannot open '", path, "'"));
  std::error_code ec;
  const uint64_t fsize = std::filesystem::file_size(path, ec);
  if (ec) throw Error(cat("cannot stat '", path, "'"));
  Reader r(in_, path_, fsize);
  char magic[4];
  r.raw(magic, 4);
  if (std::memcmp(magic, "GGUF", 4) != 0) throw Error(cat("'", path, "' is not a GGUF file"));
  const uint32_t version = r.get<uint32_t>();
  if (version != 2 && version != 3) throw Error(cat("'", path, "': GGUF version ", version, " is not supported"));
  const uint64_t n_tensors = r.get<uint64_t>(), n_kv = r.get<uint64_t>();
  if (n_tensors > 1000000 || n_kv > 1000000) throw Error(cat("'", path, "': corrupt GGUF header counts"));
  meta_ = nlohmann::json::object();
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str();
    const uint32_t t = r.get<uint32_t>();
    meta_[key] = r.value(t);
  }
  std::vector<GgufTensor> list;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = r.str();
    const uint32_t nd = r.get<uint32_t>();
    if (nd == 0 || nd > 4) throw Error(cat("'", path, "': tensor '", t.name, "' has ", nd, " dimensions"));
    for (uint32_t d = 0; d < nd; ++d) t.ne.push_back(static_cast<int64_t>(r.get<uint64_t>()));
    t.type = r.get<uint32_t>();
    t.offset = r.get<uint64_t>();
    list.push_back(t);
  }
  uint64_t align = 32;
  if (meta_.contains("general.alignment")) align = meta_["general.alignment"].get<uint64_t>();
  if (align == 0) throw Error(cat("'", path, "': general.alignment is 0"));
  data_start_ = (r.pos() + align - 1) / align * align;
  for (auto& t : list) {
    uint64_t bb = 0, be = 1;
    if (type_layout(t.type, bb, be)) {
      const uint64_t bytes = static_cast<uint64_t>(t.numel()) / be * bb;
      if (data_start_ + t.offset + bytes > fsize)
        throw Error(cat("'", path, "': tensor '", t.name, "' lies beyond the end of the file (truncated?)"));
    }
    tensors_[t.name] = t;
  }
}

std::vector<float> GgufFile::read_f32(const std::string& name) {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(cat("'", path_, "': no tensor '", name, "'"));
  const GgufTensor& t = it->second;
  uint64_t bb = 0, be = 1;
  if (!type_layout(t.type, bb, be))
    throw Error(cat("'", path_, "': tensor '", name, "' has GGUF type ", t.type,
                    ", which cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"));
  const uint64_t n = static_cast<uint64_t>(t.numel());
  if (n % be != 0) throw Error(cat("'", path_, "': tensor '", name, "' size is not a whole number of blocks"));
  std::vector<uint8_t> raw(n / be * bb);
  in_.clear();
  in_.seekg(static_cast<std::streamoff>(data_start_ + t.offset));
  in_.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (!in_) throw Error(cat("'", path_, "': cannot read tensor '", name, "' (truncated file?)"));
  std::vector<float> out(n);
  auto f16 = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
  };
  switch (t.type) {
    case T_F32: std::memcpy(out.data(), raw.data(), n * 4); break;
    case T_F16: to_f32(DType::F16, raw.data(), out.data(), n); break;
    case T_BF16: to_f32(DType::BF16, raw.data(), out.data(), n); break;
    case T_Q8_0:
      for (uint64_t b = 0; b < n / 32; ++b) {
        const uint8_t* p = raw.data() + b * 34;
        const float d = f16(p);
        for (int j = 0; j < 32; ++j) out[b * 32 + j] = d * static_cast<float>(static_cast<int8_t>(p[2 + j]));
      }
      break;
    case T_Q4_0:
      for (uint64_t b = 0; b < n / 32; ++b) {
        const uint8_t* p = raw.data() + b * 18;
        const float d = f16(p);
        for (int j = 0; j < 16; ++j) {
          out[b * 32 + j] = d * static_cast<float>((p[2 + j] & 0x0f) - 8);
          out[b * 32 + j + 16] = d * static_cast<float>((p[2 + j] >> 4) - 8);
        }
      }
      break;
    case T_Q4_1:
      for (uint64_t b = 0; b < n / 32; ++b) {
        const uint8_t* p = raw.data() + b * 20;
        const float d = f16(p), m = f16(p + 2);
        for (int j = 0; j < 16; ++j) {
          out[b * 32 + j] = d * static_cast<float>(p[4 + j] & 0x0f) + m;
          out[b * 32 + j + 16] = d * static_cast<float>(p[4 + j] >> 4) + m;
        }
      }
      break;
  }
  return out;
}

}  // namespace llmserve
