// Compares `llmserve logits` output with the transformers goldens in ../shared/fixtures/golden.
//   golden_check prompts GOLDEN.json OUT_PROMPTS.jsonl       writes the golden prompts as {"ids": [...]}
//   golden_check compare GOLDEN.json GOLDEN.f32 OUT.jsonl OUT.f32
//   golden_check requests|prompt-requests GOLDEN.json OUT_REQUESTS.jsonl   requests for `llmserve generate`
//   golden_check generated|prompt-logprobs GOLDEN.json GENERATED.jsonl     checks its output
// compare checks, for every prompt: the top-5 ids at every prompt position equal (a swap is allowed
// only between golden logits closer than the tolerance) and their logits within 1e-3; the full
// last-position logits within 1e-3 (max abs); the 24 greedy tokens equal up to the first step whose
// recorded margin is <= 1e-3. Prints one line per prompt and "N passed, N failed".
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

using json = nlohmann::json;

namespace {

constexpr double kTol = 1e-3;
constexpr size_t kForced = 12;  // prompt-requests: greedy tokens appended to each prompt

json load_json(const std::string& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error("cannot read " + p);
  return json::parse(f);
}

std::vector<float> load_f32(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string s = ss.str();
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

std::vector<json> load_jsonl(const std::string& p) {
  std::vector<json> out;
  std::ifstream f(p);
  if (!f) throw std::runtime_error("cannot read " + p);
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Whether golden value k of a top-k row is within kTol of a neighbour (their order may then swap).
bool near_tie(const json& values, size_t k) {
  const double v = values[k].get<double>();
  return (k > 0 && std::fabs(v - values[k - 1].get<double>()) < kTol) ||
         (k + 1 < values.size() && std::fabs(v - values[k + 1].get<double>()) < kTol);
}

// The generated tokens `out` against the golden greedy ones from step `from` on (out[0] is step
// `from`): "" when equal in number and up to the first step whose golden margin is <= kTol (a near-tie
// may legitimately go either way), else what differs.
std::string greedy_mismatch(const json& golden_greedy, const json& out, size_t from) {
  const auto& gids = golden_greedy["ids"];
  const auto& margins = golden_greedy["margins"];
  if (out.size() != gids.size() - from)
    return "generated " + std::to_string(out.size()) + " tokens, golden has " + std::to_string(gids.size() - from);
  for (size_t k = from; k < gids.size(); ++k) {
    if (margins[k].get<double>() <= kTol) break;
    if (out[k - from] != gids[k]) return "greedy step " + std::to_string(k) + ": " + out[k - from].dump() + " vs golden " + gids[k].dump();
  }
  return "";
}

std::string check_prompt(const json& g, const json& o, const float* gl, const float* ol, int64_t V) {
  if (o.at("prompt_ids") != g.at("ids")) return "prompt ids differ";
  const auto& gt_ids = g["prefill"]["top_ids"];
  const auto& gt_log = g["prefill"]["top_logits"];
  const auto& ot_ids = o["top_ids"];
  const auto& ot_log = o["top_logits"];
  if (gt_ids.size() != ot_ids.size()) return "number of prefill positions differs";
  for (size_t t = 0; t < gt_ids.size(); ++t) {
    for (size_t k = 0; k < gt_ids[t].size(); ++k) {
      const double gv = gt_log[t][k].get<double>(), ov = ot_log[t][k].get<double>();
      if (std::fabs(gv - ov) > kTol)
        return "position " + std::to_string(t) + " rank " + std::to_string(k) + ": logit " + std::to_string(ov) +
               " vs golden " + std::to_string(gv);
      if (gt_ids[t][k] != ot_ids[t][k] && !near_tie(gt_log[t], k))
        return "position " + std::to_string(t) + " rank " + std::to_string(k) + ": id " + ot_ids[t][k].dump() +
               " vs golden " + gt_ids[t][k].dump();
    }
  }
  double maxerr = 0;
  for (int64_t i = 0; i < V; ++i) maxerr = std::max(maxerr, static_cast<double>(std::fabs(gl[i] - ol[i])));
  if (!(maxerr < kTol)) return "last-position logits max abs error " + std::to_string(maxerr);
  if (const std::string m = greedy_mismatch(g["greedy"], o.at("generated_ids"), 0); !m.empty()) return m;
  char buf[64];
  std::snprintf(buf, sizeof buf, "ok (last-logits max err %.2e)", maxerr);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "prompts" && argc == 4) {
      json g = load_json(argv[2]);
      std::ofstream f(argv[3]);
      for (const auto& p : g.at("public")) f << json{{"ids", p.at("ids")}}.dump() << "\n";
      return f ? 0 : 1;
    }
    if (mode == "requests" && argc >= 4) {
      // Engine requests for the golden prompts: plain greedy (transformers' goldens: no repetition
      // penalty, whatever the model's generation_config.json recommends), 24 tokens, no EOS stop.
      json g = load_json(argv[2]);
      std::ofstream f(argv[3]);
      for (const auto& p : g.at("public"))
        f << json{{"prompt_token_ids", p.at("ids")}, {"max_tokens", 24}, {"temperature", 0}, {"repetition_penalty", 1.0},
                  {"ignore_eos", true}}.dump() << "\n";
      return f ? 0 : 1;
    }
    if (mode == "generated" && argc == 4) {
      // `llmserve generate` results against the golden greedy continuations.
      json g = load_json(argv[2]);
      const std::vector<json> outs = load_jsonl(argv[3]);
      const auto& pub = g.at("public");
      int passed = 0, failed = 0;
      for (size_t i = 0; i < pub.size(); ++i) {
        std::string r = "ok";
        if (i >= outs.size()) {
          r = "missing from the output";
        } else {
          if (const std::string m = greedy_mismatch(pub[i]["greedy"], outs[i]["outputs"][0]["token_ids"], 0); !m.empty()) r = m;
        }
        (r == "ok" ? passed : failed)++;
        std::printf("prompt %zu: %s (cached prompt tokens %s)\n", i, r.c_str(),
                    i < outs.size() ? outs[i]["num_cached_tokens"].dump().c_str() : "-");
      }
      std::printf("%d passed, %d failed\n", passed, failed);
      return failed == 0 ? 0 : 1;
    }
    if (mode == "prompt-requests" && argc == 4) {
      // prompt_logprobs requests: each golden prompt followed by the first kForced of its greedy tokens
      // (so every token after the prompt is the model's argmax), 5 alternatives per position; the rest
      // of the greedy tokens generated.
      json g = load_json(argv[2]);
      std::ofstream f(argv[3]);
      for (const auto& p : g.at("public")) {
        json ids = p.at("ids");
        const auto& greedy = p.at("greedy").at("ids");
        for (size_t k = 0; k < kForced; ++k) ids.push_back(greedy[k]);
        f << json{{"prompt_token_ids", ids}, {"max_tokens", greedy.size() - kForced}, {"temperature", 0},
                  {"repetition_penalty", 1.0}, {"ignore_eos", true}, {"prompt_logprobs", 5}}.dump() << "\n";
      }
      return f ? 0 : 1;
    }
    if (mode == "prompt-logprobs" && argc == 4) {
      // `llmserve generate` prompt_logprobs of the prompt-requests against the goldens: null first; at
      // every position of the golden prompt the 5 alternatives' log-probabilities within 1e-3 (ids
      // equal unless the golden values are a near-tie); over the forced greedy tokens each token's
      // log-probability within 1e-3 of the golden one and its rank 1 (2 at most where the golden
      // margin is below 1e-3); the generated tokens the remaining greedy ones (up to a near-tie).
      json g = load_json(argv[2]);
      const std::vector<json> outs = load_jsonl(argv[3]);
      const auto& pub = g.at("public");
      int passed = 0, failed = 0;
      double worst = 0;
      for (size_t i = 0; i < pub.size(); ++i) {
        std::string r = "ok";
        const auto& ids = pub[i]["ids"];
        const auto& gids = pub[i]["greedy"]["ids"];
        const size_t P = ids.size(), total = P + kForced;
        const json* pl = i < outs.size() && outs[i].contains("prompt_logprobs") ? &outs[i]["prompt_logprobs"] : nullptr;
        if (!pl || pl->size() != total || !(*pl)[0].is_null()) r = "prompt_logprobs missing or of the wrong length";
        auto fail = [&](size_t pos, const std::string& what) {
          if (r == "ok") r = "position " + std::to_string(pos) + ": " + what;
        };
        for (size_t pos = 1; r == "ok" && pos < total; ++pos) {
          const json& e = (*pl)[pos];
          const json want_token = pos < P ? ids[pos] : gids[pos - P];
          if (e["token_id"] != want_token) fail(pos, "token " + e["token_id"].dump());
          const size_t t = pos - 1;  // the prefill position that predicts it
          if (t < P) {
            const auto& gi = pub[i]["prefill"]["top_ids"][t];
            const auto& gl = pub[i]["prefill"]["top_logprobs"][t];
            const auto& top = e["top_logprobs"];
            if (top.size() != gi.size()) fail(pos, "top_logprobs of " + std::to_string(top.size()));
            for (size_t k = 0; r == "ok" && k < gi.size(); ++k) {
              const double gv = gl[k].get<double>(), ov = top[k]["logprob"].get<double>();
              worst = std::max(worst, std::fabs(gv - ov));
              if (std::fabs(gv - ov) > kTol) fail(pos, "alternative " + std::to_string(k) + " logprob " + std::to_string(ov) + " vs " + std::to_string(gv));
              if (top[k]["token_id"] != gi[k] && !near_tie(gl, k)) fail(pos, "alternative " + std::to_string(k) + " id " + top[k]["token_id"].dump());
            }
          }
          if (pos >= P) {
            const size_t j = pos - P;
            const double gv = pub[i]["greedy"]["logprobs"][j].get<double>(), ov = e["logprob"].get<double>();
            worst = std::max(worst, std::fabs(gv - ov));
            if (std::fabs(gv - ov) > kTol) fail(pos, "greedy token logprob " + std::to_string(ov) + " vs " + std::to_string(gv));
            const int rank = e["rank"].get<int>();
            if (rank != 1 && !(rank == 2 && pub[i]["greedy"]["margins"][j].get<double>() <= kTol))
              fail(pos, "greedy token rank " + std::to_string(rank));
          }
        }
        if (r == "ok")  // (the output line exists: it had the prompt_logprobs)
          if (const std::string m = greedy_mismatch(pub[i]["greedy"], outs[i]["outputs"][0]["token_ids"], kForced); !m.empty())
            r = m;
        (r == "ok" ? passed : failed)++;
        std::printf("prompt %zu: %s\n", i, r.c_str());
      }
      std::printf("worst logprob error %.2e\n%d passed, %d failed\n", worst, passed, failed);
      return failed == 0 && passed > 0 ? 0 : 1;
    }
    if (mode == "lowprec" && argc == 6) {
      // bf16/fp16 against the fp32 goldens (issue 6): last-position logits relative L2 < 1e-2; top-1
      // equal at every prompt position whose golden margin (top1 - top2) exceeds 0.1; greedy tokens
      // equal up to the first step whose margin is below 0.1.
      json g = load_json(argv[2]);
      const int64_t V = g.at("vocab_size").get<int64_t>();
      const auto gl = load_f32(argv[3]), ol = load_f32(argv[5]);
      const std::vector<json> outs = load_jsonl(argv[4]);
      const auto& pub = g.at("public");
      int passed = 0, failed = 0;
      double worst = 0;
      for (size_t i = 0; i < pub.size(); ++i) {
        std::string r = "ok";
        if (i >= outs.size() || ol.size() < (i + 1) * V) {
          r = "missing";
        } else {
          double num = 0, den = 0;
          for (int64_t k = 0; k < V; ++k) {
            const double d = ol[i * V + k] - gl[i * V + k];
            num += d * d;
            den += static_cast<double>(gl[i * V + k]) * gl[i * V + k];
          }
          const double rel = std::sqrt(num / den);
          worst = std::max(worst, rel);
          if (!(rel < 1e-2)) r = "last-logits relative L2 " + std::to_string(rel);
          const auto& tl = pub[i]["prefill"]["top_logits"];
          const auto& ti = pub[i]["prefill"]["top_ids"];
          for (size_t t = 0; r == "ok" && t < ti.size(); ++t)
            if (tl[t][0].get<double>() - tl[t][1].get<double>() > 0.1 && outs[i]["top_ids"][t][0] != ti[t][0])
              r = "top-1 differs at position " + std::to_string(t);
          const auto& gids = pub[i]["greedy"]["ids"];
          const auto& margins = pub[i]["greedy"]["margins"];
          for (size_t k = 0; r == "ok" && k < gids.size(); ++k) {
            if (margins[k].get<double>() < 0.1) break;
            if (outs[i]["generated_ids"][k] != gids[k]) r = "greedy step " + std::to_string(k) + " differs";
          }
        }
        (r == "ok" ? passed : failed)++;
        std::printf("prompt %zu: %s\n", i, r.c_str());
      }
      std::printf("worst last-logits relative L2: %.2e\n%d passed, %d failed\n", worst, passed, failed);
      return failed == 0 ? 0 : 1;
    }
    if (mode != "compare" || argc != 6) {
      std::fprintf(stderr, "usage: golden_check prompts G.json OUT.jsonl | compare G.json G.f32 OUT.jsonl OUT.f32\n");
      return 2;
    }
    json g = load_json(argv[2]);
    const int64_t V = g.at("vocab_size").get<int64_t>();
    const auto gl = load_f32(argv[3]), ol = load_f32(argv[5]);
    const std::vector<json> outs = load_jsonl(argv[4]);
    const auto& pub = g.at("public");
    int passed = 0, failed = 0;
    for (size_t i = 0; i < pub.size(); ++i) {
      std::string r;
      if (i >= outs.size() || ol.size() < (i + 1) * V) {
        r = "missing from the output";
      } else {
        r = check_prompt(pub[i], outs[i], &gl[i * V], &ol[i * V], V);
      }
      const bool ok = r.rfind("ok", 0) == 0;
      (ok ? passed : failed)++;
      std::printf("prompt %zu: %s\n", i, r.c_str());
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "golden_check: %s\n", e.what());
    return 1;
  }
}
