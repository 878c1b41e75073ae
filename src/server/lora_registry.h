// The LoRA adapters the server serves by name (enable_lora): lora_modules' at start-up, and with runtime
// LoRA updating (VLLM_ALLOW_RUNTIME_LORA_UPDATING) those /v1/load_lora_adapter adds and
// /v1/unload_lora_adapter takes away, while HTTP threads resolve requests' `model` against them.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "model/lora.h"

namespace llmserve {

class LoraRegistry {
 public:
  struct Entry {
    LoraModuleSpec spec;
    uint64_t uid = 0;  // SamplingParams::lora_uid (the engine's, Engine::load_lora's)
  };
  explicit LoraRegistry(bool runtime_updates) : runtime_updates_(runtime_updates) {}
  bool runtime_updates() const { return runtime_updates_; }

  std::optional<Entry> find(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Entry& e : entries_)
      if (e.spec.name == name) return e;
    return std::nullopt;
  }
  // In the order they were added.
  std::vector<Entry> list() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_;
  }
  void add(Entry e) {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.push_back(std::move(e));
  }
  // False when none of that name is served.
  bool remove(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->spec.name == name) {
        entries_.erase(it);
        return true;
      }
    return false;
  }

 private:
  const bool runtime_updates_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

}  // namespace llmserve
