// Tokenizer encode throughput, single thread: tokenizer_bench TOKENIZER_JSON CORPUS [IDS_OUT]
// Prints MB/s for a cold pass (fresh tokenizer, empty word cache) and a warm pass.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/file_util.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: tokenizer_bench TOKENIZER_JSON CORPUS [IDS_OUT]\n");
    return 2;
  }
  const std::string tj = llmserve::read_file(argv[1]), text = llmserve::read_file(argv[2]);
  llmserve::Tokenizer tok(tj, "");
  const double mb = text.size() / 1e6;
  std::vector<int32_t> ids;
  for (int pass = 0; pass < 2; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = tok.encode(text, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("llmserve %s pass: %.2f MB in %.3f s = %.2f MB/s (%zu tokens)\n", pass ? "warm" : "cold", mb, s, mb / s,
                ids.size());
  }
  if (argc > 3) {
    std::ofstream o(argv[3]);
    for (size_t i = 0; i < ids.size(); ++i) o << ids[i] << (i + 1 < ids.size() ? ' ' : '\n');
  }
  return 0;
}
