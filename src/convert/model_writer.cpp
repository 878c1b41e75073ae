#include "convert/model_writer.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "model/model_file.h"

namespace llmserve {

std::vector<uint64_t> chunk_shape(const std::vector<int64_t>& shape, size_t elem_bytes) {
  std::vector<uint64_t> c(shape.begin(), shape.end());
  for (size_t i = 0; i < c.size(); ++i)
    if (c[i] % 8 == 0 && c[i] >= 512) c[i] /= 8;  // chunks stay >= 64 wide
  auto bytes = [&] {
    uint64_t b = elem_bytes;
    for (auto x : c) b *= x;
    return b;
  };
  const uint64_t limit = 2u << 20;
  bool changed = true;
  while (bytes() > limit && changed) {
    changed = false;
    for (size_t i = 0; i < c.size() && bytes() > limit; ++i) {
      if (c[i] % 2 == 0 && c[i] >= 128) {
        c[i] /= 2;
        changed = true;
      }
    }
  }
  for (auto& x : c)
    if (x == 0) x = 1;
  return c;
}

ModelWriter::ModelWriter(const std::string& path, const ModelSpec& spec, const std::string& source)
    : path_(path) {
  const std::filesystem::path target(path);
  std::string name = ".";  // (appended piece by piece: "." + string draws a GCC 12 -Wrestrict false positive)
  name += target.filename().string();
  name += ".tmp-";
  name += std::to_string(getpid());
  tmp_ = (target.parent_path() / name).string();
  file_ = h5::create_file(tmp_);
  h5::write_attr(file_.id(), "format", std::string(kModelFormat));
  h5::write_attr(file_.id(), "format_version", kModelFormatVersion);
  h5::write_attr(file_.id(), "source", source);
  config_ = h5::create_group(file_.id(), "config");
  write_model_spec(config_.id(), spec);
  tokenizer_ = h5::create_group(file_.id(), "tokenizer");
  weights_ = h5::create_group(file_.id(), "weights");
}

ModelWriter::~ModelWriter() {
  if (!committed_) {
    weights_.reset();
    tokenizer_.reset();
    config_.reset();
    file_.reset();
    std::remove(tmp_.c_str());
  }
}

void ModelWriter::add_text(const std::string& group, const std::string& name, const std::string& text) {
  hid_t g = group == "config" ? config_.id() : group == "tokenizer" ? tokenizer_.id() : -1;
  LLMSERVE_CHECK(g >= 0, "ModelWriter: unknown group ", group);
  h5::write_text(g, name, text);
}

void ModelWriter::add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                             const void* data) {
  LLMSERVE_CHECK(!shape.empty() && shape.size() <= 2, "tensor '", name, "': only 1-D and 2-D tensors are stored");
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  auto chunks = chunk_shape(shape, dtype_size(dtype));
  std::vector<hsize_t> cdims(chunks.begin(), chunks.end());
  H5Pset_chunk(dcpl.id(), static_cast<int>(cdims.size()), cdims.data());
  const hid_t type = dtype == DType::F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16;
  h5::Handle d(H5Dcreate2(weights_.id(), name.c_str(), type, space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT),
               H5Dclose);
  if (!d) throw Error(cat("HDF5: cannot create dataset for tensor '", name, "'"));
  if (H5Dwrite(d.id(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    throw Error(cat("HDF5: cannot write tensor '", name, "' (disk full?)"));
  h5::write_attr(d.id(), "dtype", std::string(dtype_name(dtype)));
}

void ModelWriter::commit() {
  weights_.reset();
  tokenizer_.reset();
  config_.reset();
  if (H5Fflush(file_.id(), H5F_SCOPE_GLOBAL) < 0) throw Error(cat("HDF5: cannot flush '", tmp_, "'"));
  file_.reset();
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) throw Error(cat("cannot rename '", tmp_, "' to '", path_, "': ", ec.message()));
  committed_ = true;
}

}  // namespace llmserve
