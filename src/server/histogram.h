// A Prometheus histogram with fixed buckets, updated from any thread (the server's metrics).
#pragma once
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace llmserve {

struct Histogram {
  std::vector<double> bounds;
  std::unique_ptr<std::atomic<int64_t>[]> counts;
  std::atomic<int64_t> n{0}, sum_micro{0};  // the sum in millionths (atomic, whole)
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(new std::atomic<int64_t>[bounds.size() + 1]) {
    for (size_t i = 0; i <= bounds.size(); ++i) counts[i] = 0;
  }
  void observe(double v) {
    size_t b = 0;
    while (b < bounds.size() && v > bounds[b]) ++b;
    ++counts[b];
    ++n;
    sum_micro += std::llround(v * 1e6);
  }
  // A count of millionths in decimal, every digit kept (4.3, 274.828512): a stream's default 6 significant
  // digits printed a sum of 274.828512 s as 274.829.
  static std::string micro_text(int64_t micro) {
    char t[40];
    std::snprintf(t, sizeof t, "%s%lld.%06lld", micro < 0 ? "-" : "", static_cast<long long>(std::llabs(micro) / 1000000),
                  static_cast<long long>(std::llabs(micro) % 1000000));
    std::string s = t;
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
    return s;
  }
  // Its HELP, TYPE and samples, labelled with the model's name.
  std::string text(const std::string& name, const std::string& help, const std::string& model) const {
    std::string m = cat("# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
    int64_t cum = 0;
    for (size_t b = 0; b <= bounds.size(); ++b) {
      cum += counts[b].load();
      const std::string le = b < bounds.size() ? cat(bounds[b]) : "+Inf";
      m += cat(name, "_bucket{model_name=\"", model, "\",le=\"", le, "\"} ", cum, "\n");
    }
    m += cat(name, "_sum{model_name=\"", model, "\"} ", micro_text(sum_micro.load()), "\n");
    m += cat(name, "_count{model_name=\"", model, "\"} ", n.load(), "\n");
    return m;
  }
};

// vLLM's buckets of a count up to `max` (build_1_2_5_buckets): 1, 2, 5, 10, 20, 50, ... while <= max.
inline std::vector<double> buckets_1_2_5(int64_t max) {
  std::vector<double> b;
  for (double scale = 1;; scale *= 10)
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * scale > static_cast<double>(max)) return b;
      b.push_back(m * scale);
    }
}

}  // namespace llmserve
