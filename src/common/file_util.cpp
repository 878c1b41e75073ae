#include "common/file_util.h"

#include <fstream>
#include <iterator>

#include "common/error.h"

namespace llmserve {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(cat("cannot read '", path, "'"));
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error(cat("cannot read '", path, "'"));
  return s;
}

}  // namespace llmserve
