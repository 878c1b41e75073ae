#include "common/h5.h"

#include "common/error.h"

namespace llmserve::h5 {
namespace {

std::string obj_name(hid_t obj) {
  char buf[512];
  ssize_t n = H5Iget_name(obj, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n) < sizeof buf ? n : sizeof buf - 1) : "?";
}

Handle str_type(size_t len) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, len == 0 ? 1 : len);
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  return Handle(t, H5Tclose);
}

void check(herr_t rc, const std::string& what) {
  if (rc < 0) throw Error("HDF5: " + what);
}

Handle open_attr(hid_t obj, const std::string& name) {
  if (H5Aexists(obj, name.c_str()) <= 0)
    throw Error(cat("model file: attribute '", name, "' missing on ", obj_name(obj)));
  hid_t a = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
  if (a < 0) throw Error(cat("model file: cannot open attribute '", name, "'"));
  return Handle(a, H5Aclose);
}

void write_attr_raw(hid_t obj, const std::string& name, hid_t type, hid_t space, const void* data) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle a(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a) throw Error(cat("HDF5: cannot create attribute '", name, "'"));
  if (H5Sget_simple_extent_type(space) == H5S_NULL) return;  // an empty list: nothing to write
  check(H5Awrite(a.id(), type, data), "write attribute " + name);
}

}  // namespace

void silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

Handle open_file(const std::string& path) {
  silence_errors();
  if (H5Fis_hdf5(path.c_str()) <= 0) throw Error(cat("model file '", path, "' is missing or not an HDF5 file"));
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) throw Error(cat("cannot open model file '", path, "'"));
  return Handle(f, H5Fclose);
}

Handle create_file(const std::string& path) {
  silence_errors();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) throw Error(cat("cannot create '", path, "'"));
  return Handle(f, H5Fclose);
}

bool exists(hid_t loc, const std::string& name) { return H5Lexists(loc, name.c_str(), H5P_DEFAULT) > 0; }

Handle open_group(hid_t loc, const std::string& name, const std::string& what) {
  if (!exists(loc, name)) throw Error(cat(what, ": group '", name, "' missing"));
  hid_t g = H5Gopen2(loc, name.c_str(), H5P_DEFAULT);
  if (g < 0) throw Error(cat(what, ": cannot open group '", name, "'"));
  return Handle(g, H5Gclose);
}

Handle create_group(hid_t loc, const std::string& name) {
  hid_t g = H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) throw Error(cat("HDF5: cannot create group '", name, "'"));
  return Handle(g, H5Gclose);
}

void write_attr(hid_t obj, const std::string& name, const std::string& value) {
  Handle t = str_type(value.size());
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  std::string v = value.empty() ? std::string(1, '\0') : value;
  write_attr_raw(obj, name, t.id(), s.id(), v.data());
}

void write_attr(hid_t obj, const std::string& name, int64_t value) {
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  write_attr_raw(obj, name, H5T_NATIVE_INT64, s.id(), &value);
}

void write_attr(hid_t obj, const std::string& name, double value) {
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  write_attr_raw(obj, name, H5T_NATIVE_DOUBLE, s.id(), &value);
}

void write_attr(hid_t obj, const std::string& name, const std::vector<int64_t>& values) {
  hsize_t n = values.size();
  Handle s(n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr), H5Sclose);
  write_attr_raw(obj, name, H5T_NATIVE_INT64, s.id(), values.data());
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

std::string read_attr_str(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  Handle ft(H5Aget_type(a.id()), H5Tclose);
  if (H5Tget_class(ft.id()) != H5T_STRING) throw Error(cat("model file: attribute '", name, "' is not a string"));
  if (H5Tis_variable_str(ft.id()) > 0) throw Error(cat("model file: attribute '", name, "' is a variable string"));
  size_t len = H5Tget_size(ft.id());
  std::string out(len, '\0');
  Handle mt = str_type(len);
  check(H5Aread(a.id(), mt.id(), out.data()), "read attribute " + name);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

int64_t read_attr_i64(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  int64_t v = 0;
  check(H5Aread(a.id(), H5T_NATIVE_INT64, &v), "read attribute " + name);
  return v;
}

double read_attr_f64(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  double v = 0;
  check(H5Aread(a.id(), H5T_NATIVE_DOUBLE, &v), "read attribute " + name);
  return v;
}

std::vector<int64_t> read_attr_i64_vec(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  Handle s(H5Aget_space(a.id()), H5Sclose);
  hssize_t n = H5Sget_simple_extent_npoints(s.id());
  std::vector<int64_t> v(n > 0 ? n : 0);
  if (!v.empty()) check(H5Aread(a.id(), H5T_NATIVE_INT64, v.data()), "read attribute " + name);
  return v;
}

void write_text(hid_t loc, const std::string& name, const std::string& text) {
  Handle t = str_type(text.size());
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  Handle d(H5Dcreate2(loc, name.c_str(), t.id(), s.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!d) throw Error(cat("HDF5: cannot create dataset '", name, "'"));
  std::string v = text.empty() ? std::string(1, '\0') : text;
  check(H5Dwrite(d.id(), t.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "write " + name);
}

std::string read_text(hid_t loc, const std::string& name) {
  if (!exists(loc, name)) throw Error(cat("model file: '", name, "' missing"));
  Handle d(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!d) throw Error(cat("model file: cannot open '", name, "'"));
  Handle ft(H5Dget_type(d.id()), H5Tclose);
  if (H5Tget_class(ft.id()) != H5T_STRING) throw Error(cat("model file: '", name, "' is not text"));
  size_t len = H5Tget_size(ft.id());
  std::string out(len, '\0');
  Handle mt = str_type(len);
  check(H5Dread(d.id(), mt.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "read " + name);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

std::vector<int64_t> dataset_shape(hid_t dset) {
  Handle s(H5Dget_space(dset), H5Sclose);
  int nd = H5Sget_simple_extent_ndims(s.id());
  if (nd < 0) throw Error("HDF5: cannot read a dataset's shape");
  std::vector<hsize_t> dims(nd);
  H5Sget_simple_extent_dims(s.id(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

void read_slice(hid_t dset, hid_t mem_type, int64_t r0, int64_t nr, int64_t c0, int64_t nc, void* out) {
  Handle fs(H5Dget_space(dset), H5Sclose);
  const int nd = H5Sget_simple_extent_ndims(fs.id());
  if (nd == 1) {
    hsize_t start = r0, count = nr;
    check(H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, &start, nullptr, &count, nullptr), "select");
    Handle ms(H5Screate_simple(1, &count, nullptr), H5Sclose);
    check(H5Dread(dset, mem_type, ms.id(), fs.id(), H5P_DEFAULT, out), "read slice");
    return;
  }
  if (nd != 2) throw Error("HDF5: only 1-D and 2-D weight datasets are supported");
  hsize_t start[2] = {static_cast<hsize_t>(r0), static_cast<hsize_t>(c0)};
  hsize_t count[2] = {static_cast<hsize_t>(nr), static_cast<hsize_t>(nc)};
  check(H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, start, nullptr, count, nullptr), "select");
  Handle ms(H5Screate_simple(2, count, nullptr), H5Sclose);
  check(H5Dread(dset, mem_type, ms.id(), fs.id(), H5P_DEFAULT, out), "read slice");
}

}  // namespace llmserve::h5
