// llmserve-convert: Hugging Face checkpoint directory or GGUF file -> llmserve HDF5 model.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"
#include "convert/converter.h"

namespace {
const char* kUsage =
    "usage: llmserve-convert INPUT -o OUTPUT.h5 [--dtype keep|bfloat16|float16|float32] [--force]\n"
    "  INPUT   a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer files)\n"
    "          or a .gguf file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors are dequantized)\n"
    "  --dtype keep stores weights in the checkpoint's dtype (GGUF: float32)\n";
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  llmserve::ConvertOptions opt;
  try {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto value = [&](const char* name) {
        if (i + 1 >= args.size()) throw llmserve::Error(llmserve::cat(name, " needs a value"));
        return args[++i];
      };
      if (a == "-h" || a == "--help") {
        std::printf("%s", kUsage);
        return 0;
      } else if (a == "-o" || a == "--output") {
        opt.output = value("-o");
      } else if (a == "--dtype") {
        opt.dtype = value("--dtype");
      } else if (a == "--force") {
        opt.force = true;
      } else if (a.rfind("-", 0) == 0) {
        throw llmserve::Error(llmserve::cat("unknown option '", a, "'"));
      } else if (opt.input.empty()) {
        opt.input = a;
      } else {
        throw llmserve::Error(llmserve::cat("unexpected argument '", a, "'"));
      }
    }
    if (opt.input.empty()) {
      std::fprintf(stderr, "%s", kUsage);
      return 2;
    }
    llmserve::convert_model(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llmserve-convert: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
