// Whole-file reads with errors that name the file.
#pragma once
#include <string>

namespace llmserve {

// The file's bytes; throws Error("cannot read '<path>'").
std::string read_file(const std::string& path);

}  // namespace llmserve
