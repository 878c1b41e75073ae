#include "convert/safetensors.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace llmserve {

namespace {
size_t st_dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "BF16" || d == "F16" || d == "I16" || d == "U16") return 2;
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}
}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), in_(path, std::ios::binary) {
  if (!in_) throw Error(cat("cannot open '", path, "'"));
  std::error_code ec;
  const uint64_t fsize = std::filesystem::file_size(path, ec);
  if (ec || fsize < 8) throw Error(cat("'", path, "': truncated safetensors file (no header)"));
  unsigned char lenb[8];
  in_.read(reinterpret_cast<char*>(lenb), 8);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | lenb[i];
  if (hlen == 0 || hlen > fsize - 8 || hlen > (100ull << 20))
    throw Error(cat("'", path, "': corrupt safetensors header length ", hlen));
  std::string header(hlen, '\0');
  in_.read(header.data(), static_cast<std::streamsize>(hlen));
  if (!in_) throw Error(cat("'", path, "': truncated safetensors header"));
  data_start_ = 8 + hlen;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("'", path, "': corrupt safetensors header: ", e.what()));
  }
  if (!j.is_object()) throw Error(cat("'", path, "': corrupt safetensors header (not an object)"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& v = it.value();
    SafetensorsEntry e;
    try {
      e.dtype = v.at("dtype").get<std::string>();
      e.shape = v.at("shape").get<std::vector<int64_t>>();
      const auto off = v.at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2) throw Error("data_offsets must have two entries");
      e.begin = off[0];
      e.end = off[1];
    } catch (const std::exception& ex) {
      throw Error(cat("'", path, "': tensor '", it.key(), "': bad header entry: ", ex.what()));
    }
    const size_t es = st_dtype_size(e.dtype);
    if (es == 0) throw Error(cat("'", path, "': tensor '", it.key(), "': unknown dtype ", e.dtype));
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) throw Error(cat("'", path, "': tensor '", it.key(), "': negative dimension"));
      numel *= static_cast<uint64_t>(d);
    }
    if (e.end < e.begin || e.end - e.begin != numel * es)
      throw Error(cat("'", path, "': tensor '", it.key(), "': data_offsets do not match its shape and dtype"));
    if (data_start_ + e.end > fsize)
      throw Error(cat("'", path, "': tensor '", it.key(), "' lies beyond the end of the file (truncated?)"));
    entries_[it.key()] = e;
  }
}

std::vector<char> SafetensorsFile::read(const std::string& name) {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(cat("'", path_, "': no tensor '", name, "'"));
  const auto& e = it->second;
  std::vector<char> buf(e.end - e.begin);
  in_.clear();
  in_.seekg(static_cast<std::streamoff>(data_start_ + e.begin));
  in_.read(buf.data(), static_cast<std::streamsize>(buf.size()));
  if (!in_) throw Error(cat("'", path_, "': cannot read tensor '", name, "' (truncated file?)"));
  return buf;
}

DType safetensors_dtype(const std::string& d, const std::string& file, const std::string& name) {
  if (d == "BF16") return DType::BF16;
  if (d == "F16") return DType::F16;
  if (d == "F32") return DType::F32;
  throw Error(cat("'", file, "': tensor '", name, "' has dtype ", d, " (supported: BF16, F16, F32)"));
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) {
  const std::vector<char> raw = read(name);
  const DType t = safetensors_dtype(entries_.at(name).dtype, path_, name);
  std::vector<float> out(raw.size() / dtype_size(t));
  to_f32(t, raw.data(), out.data(), out.size());
  return out;
}

}  // namespace llmserve
