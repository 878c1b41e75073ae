// Helpers shared by the unit tests.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "common/error.h"
#include "dist/comm.h"
#include "model/model_spec.h"

namespace llmserve::testing {

// A scratch directory for this test process: the system's temporary directory / llmserve-<name>-<pid>,
// created if missing and removed when the process exits. ctest runs every test case as its own
// process, two at a time in CI, so a fixed name would let one test overwrite a file another is about
// to read.
inline std::filesystem::path temp_dir(const std::string& name) {
  struct Cleanup {
    std::vector<std::filesystem::path> dirs;
    ~Cleanup() {
      for (const auto& d : dirs) {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    }
  };
  static Cleanup cleanup;
  const std::filesystem::path p =
      std::filesystem::path(::testing::TempDir()) / ("llmserve-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(p);
  if (std::find(cleanup.dirs.begin(), cleanup.dirs.end(), p) == cleanup.dirs.end()) cleanup.dirs.push_back(p);
  return p;
}

// A small Llama-style spec.
inline ModelSpec small_spec(int heads, int kv_heads, int64_t intermediate, int layers, int64_t hidden = 64,
                            int head_dim = 16, int64_t vocab = 1000) {
  ModelSpec s;
  s.architecture = "LlamaForCausalLM";
  s.model_type = "llama";
  s.hidden_size = hidden;
  s.intermediate_size = intermediate;
  s.num_layers = layers;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.vocab_size = vocab;
  s.max_position_embeddings = 128;
  return s;
}

// A one-rank communicator: collectives are identities.
class SelfComm : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_max(float*, size_t) override {}
  void all_reduce_maxloc(float*, int32_t*, size_t) override {}
  void all_gather(const float* s, size_t n, float* r) override { std::copy(s, s + n, r); }
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override { throw Error("SelfComm: no peers"); }
  void recv(void*, size_t, int) override { throw Error("SelfComm: no peers"); }
  void barrier() override {}
};

}  // namespace llmserve::testing
