// Thin RAII layer over the HDF5 C API: handles, attributes, text datasets, and reading a 2-D
// hyperslab (a tensor-parallel slice) of a weight dataset. Every failure throws Error naming the file
// and the object. HDF5's own error-stack printing is turned off.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace llmserve::h5 {

class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t id() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

void silence_errors();

Handle open_file(const std::string& path);    // read-only
Handle create_file(const std::string& path);  // truncates
Handle open_group(hid_t loc, const std::string& name, const std::string& what);
Handle create_group(hid_t loc, const std::string& name);
bool exists(hid_t loc, const std::string& name);

void write_attr(hid_t obj, const std::string& name, const std::string& value);
void write_attr(hid_t obj, const std::string& name, int64_t value);
void write_attr(hid_t obj, const std::string& name, double value);
void write_attr(hid_t obj, const std::string& name, const std::vector<int64_t>& values);
bool has_attr(hid_t obj, const std::string& name);
std::string read_attr_str(hid_t obj, const std::string& name);
int64_t read_attr_i64(hid_t obj, const std::string& name);
double read_attr_f64(hid_t obj, const std::string& name);
std::vector<int64_t> read_attr_i64_vec(hid_t obj, const std::string& name);

// A text document (tokenizer.json, a chat template) as a scalar string dataset.
void write_text(hid_t loc, const std::string& name, const std::string& text);
std::string read_text(hid_t loc, const std::string& name);

// Dimensions of a dataset.
std::vector<int64_t> dataset_shape(hid_t dset);

// Reads rows [r0, r0+nr) x cols [c0, c0+nc) of a 1-D (nc ignored) or 2-D dataset whose elements
// have `elem_bytes` bytes, into `out` (row-major nr x nc). `mem_type` is the HDF5 memory type.
void read_slice(hid_t dset, hid_t mem_type, int64_t r0, int64_t nr, int64_t c0, int64_t nc, void* out);

}  // namespace llmserve::h5
