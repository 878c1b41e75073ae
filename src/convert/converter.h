// Converts a Hugging Face checkpoint directory or a GGUF file into an llmserve model file.
#pragma once
#include <string>

namespace llmserve {

struct ConvertOptions {
  std::string input;           // HF checkpoint directory, or a .gguf file
  std::string output;          // model .h5 to write
  std::string dtype = "keep";  // keep | bfloat16 | float16 | float32 (GGUF: keep means float32)
  bool force = false;          // overwrite an existing output
};

// Throws Error naming the file (and tensor) on any problem; the output is then left untouched.
void convert_model(const ConvertOptions& opt);

}  // namespace llmserve
