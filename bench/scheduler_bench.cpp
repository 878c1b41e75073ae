// Scheduler cost per step with many running sequences, no model: scheduler_bench [SEQS] [STEPS] [EVICT_MB]
// Each step: schedule() (1024 decodes), serialize the plan (what rank 0 sends), and feed back one
// sampled token per sequence. Prints microseconds per step; a GPU decode step of a 1.5B model takes
// milliseconds, so the target is well under 1 ms. EVICT_MB > 0 writes over that many MB between steps
// (not timed), as a server's forward pass, sampler and HTTP threads do: the scheduler then finds its
// sequences' state out of cache, as it does in a server.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/scheduler.h"

using namespace llmserve;

int main(int argc, char** argv) {
  const int seqs = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 200;
  const int evict_mb = argc > 3 ? std::atoi(argv[3]) : 0;
  std::vector<char> evict(static_cast<size_t>(evict_mb > 0 ? evict_mb : 0) << 20);
  SchedulerConfig c;
  c.max_num_seqs = seqs;
  c.max_num_batched_tokens = 8192;
  c.max_model_len = 4096;
  c.block_size = 16;
  c.num_blocks = static_cast<int64_t>(seqs) * 4096 / 16;
  Scheduler s(c);
  for (int i = 0; i < seqs; ++i) {
    auto q = std::make_unique<Sequence>();
    q->id = static_cast<uint64_t>(i + 1);
    q->tokens.assign(512, 100 + i % 1000);  // 512-token prompts, distinct per 1000
    q->tokens[0] = i;
    q->prompt_len = 512;
    q->params.max_tokens = 4096;
    s.add(std::move(q));
  }
  // Prefill everything first (not timed).
  int guard = 0;
  while (s.num_waiting() > 0 && guard++ < 100000) {
    StepPlan p = s.schedule();
    for (const auto& x : p.seqs)
      if (x.sample) s.on_token({x.seq_id, 7, 0, {}, {}});
  }
  double sched_us = 0, total_us = 0;
  size_t bytes = 0;
  for (int k = 0; k < steps; ++k) {
    if (!evict.empty()) std::memset(evict.data(), k & 0xff, evict.size());
    const auto t0 = std::chrono::steady_clock::now();
    StepPlan p = s.schedule();
    const auto t1 = std::chrono::steady_clock::now();
    const std::string msg = p.serialize();
    bytes = msg.size();
    for (const auto& x : p.seqs) s.on_token({x.seq_id, 7 + k % 50, 0, {}, {}});
    const auto t2 = std::chrono::steady_clock::now();
    sched_us += std::chrono::duration<double, std::micro>(t1 - t0).count();
    total_us += std::chrono::duration<double, std::micro>(t2 - t0).count();
    if (static_cast<int>(p.seqs.size()) != seqs) {
      std::fprintf(stderr, "step %d scheduled %zu of %d sequences\n", k, p.seqs.size(), seqs);
      return 1;
    }
  }
  std::printf("scheduler: %d running sequences, %d decode steps%s: schedule %.1f us/step, "
              "schedule+serialize+tokens %.1f us/step (%.0f steps/s), plan %zu bytes\n",
              seqs, steps, evict_mb > 0 ? (", caches evicted between steps (" + std::to_string(evict_mb) + " MB)").c_str() : "",
              sched_us / steps, total_us / steps, 1e6 * steps / total_us, bytes);
  return 0;
}
