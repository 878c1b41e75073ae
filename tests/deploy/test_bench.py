#!/usr/bin/env python3
"""llmserve-bench against a CPU-backend llmserve with tp=2, pp=2 (4 ranks) on loopback: its token counts
must equal what the server reports (per request in usage, and in total in /metrics), no request may fail,
failures must be counted as failures, and the result file must hold every statistic.
Usage: test_bench.py BUILD_DIR"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
sys.argv = sys.argv[:2]
import test_server as T  # noqa: E402  (the server harness: start, request, metrics, stop)

BENCH = os.path.join(HERE, "..", "..", "bench", "llmserve-bench")
ROOT = os.path.join(HERE, "..", "..")


def bench(s, *args):
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    os.unlink(out)
    r = subprocess.run([sys.executable, BENCH, "--base-url", f"http://127.0.0.1:{s.port}", "--result-file", out, *args],
                       capture_output=True, text=True, timeout=300)
    res = None
    if os.path.exists(out):
        with open(out) as f:
            res = json.load(f)
        os.unlink(out)
    return r, res


def main():
    s = T.Server("-pp", "2", "--max-model-len", "256", np=4, tp=2)
    check = T.check
    try:
        gen0 = s.metric("llmserve:generation_tokens_total")
        prompt0 = s.metric("llmserve:prompt_tokens_total")
        r, res = bench(s, "--num-prompts", "24", "--random-input-len", "32", "--random-output-len", "12",
                       "--max-concurrency", "6")
        check("random dataset: exit 0, 24 completed, none failed", r.returncode == 0 and res and res["completed"] == 24
              and res["failed"] == 0, (r.returncode, r.stderr[-500:]))
        reqs = res["requests"] if res else []
        check("every request: output tokens = usage.completion_tokens = 12",
              reqs and all(q["output_tokens"] == q["usage"]["completion_tokens"] == 12 for q in reqs), reqs[:2])
        check("every request: input tokens = usage.prompt_tokens = 32",
              reqs and all(q["input_tokens"] == q["usage"]["prompt_tokens"] == 32 for q in reqs), reqs[:2])
        check("every request streamed one chunk per token (12)", reqs and all(q["streamed_chunks"] == 12 for q in reqs),
              [q["streamed_chunks"] for q in reqs])
        gen1 = s.metric("llmserve:generation_tokens_total")
        prompt1 = s.metric("llmserve:prompt_tokens_total")
        check("total output tokens = the server's generation_tokens_total increase",
              res and res["total_output_tokens"] == 24 * 12 == gen1 - gen0, (res and res["total_output_tokens"], gen1 - gen0))
        check("total input tokens = the server's prompt_tokens_total increase",
              res and res["total_input_tokens"] == 24 * 32 == prompt1 - prompt0, (res and res["total_input_tokens"], prompt1 - prompt0))
        stats_ok = res and all(res[k][q] is not None and res[k][q] > 0 for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
                               for q in ("mean", "p50", "p90", "p99"))
        check("result file: TTFT, TPOT, ITL and e2e latency mean/p50/p90/p99", stats_ok, res and res["ttft_ms"])
        check("result: percentiles ordered, throughput consistent", res and res["ttft_ms"]["p50"] <= res["ttft_ms"]["p99"]
              and abs(res["output_throughput"] * res["duration_s"] - res["total_output_tokens"]) < 1e-6 * res["total_output_tokens"] + 1e-6)
        check("summary printed", "Output token throughput (tok/s):" in r.stdout and "P99 TTFT (ms):" in r.stdout, r.stdout[-400:])
        check("progress line printed", "[llmserve-bench] 24/24 done, 0 failed" in r.stderr, r.stderr[-300:])

        # Chat JSONL prompts at a Poisson rate: usage again matches the server's counters.
        gen1 = s.metric("llmserve:generation_tokens_total")
        r, res = bench(s, "--dataset", "jsonl", "--dataset-path", os.path.join(ROOT, "inputs", "prompts", "demo-chat.jsonl"),
                       "--num-prompts", "6", "--max-tokens", "8", "--ignore-eos", "--request-rate", "20", "--disable-progress")
        gen2 = s.metric("llmserve:generation_tokens_total")
        check("jsonl chat at 20 req/s: all complete, tokens = server's count", r.returncode == 0 and res and res["completed"] == 6
              and res["total_output_tokens"] == 48 == gen2 - gen1 and res["request_rate"] == 20, (r.stderr[-300:], res and res["total_output_tokens"], gen2 - gen1))

        # Requests the server refuses are failures, with the server's message, and the exit code says so.
        r, res = bench(s, "--num-prompts", "3", "--random-input-len", "300", "--random-output-len", "4", "--disable-progress")
        check("refused requests counted as failed (exit 1, the server's message kept)", r.returncode == 1 and res
              and res["failed"] == 3 and res["completed"] == 0 and any("maximum context length" in e for e in res["errors"]),
              (r.returncode, res and res["errors"]))
        # Sampling options reach the server: accepted ones complete, an out-of-range one is refused by it.
        r, res = bench(s, "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "6", "--temperature", "0.8",
                       "--top-p", "0.9", "--top-k", "20", "--min-p", "0.05", "--repetition-penalty", "1.1", "--disable-progress")
        check("top-p/top-k/min-p/repetition-penalty: all complete", r.returncode == 0 and res and res["completed"] == 4,
              (r.returncode, r.stderr[-300:]))
        # Log-probabilities: asked for on both endpoints, every token comes back with them.
        r, res = bench(s, "--num-prompts", "3", "--random-input-len", "16", "--random-output-len", "5", "--ignore-eos",
                       "--logprobs", "3", "--disable-progress")
        check("--logprobs 3 (completions): every token has its log-probabilities",
              r.returncode == 0 and res and res["completed"] == 3
              and all(q["logprob_tokens"] == q["output_tokens"] == 5 for q in res["requests"]),
              (r.returncode, res and [q["logprob_tokens"] for q in res["requests"]], r.stderr[-300:]))
        r, res = bench(s, "--dataset", "jsonl", "--dataset-path", os.path.join(ROOT, "inputs", "prompts", "demo-chat.jsonl"),
                       "--num-prompts", "2", "--max-tokens", "4", "--ignore-eos", "--logprobs", "2", "--disable-progress")
        check("--logprobs 2 (chat): every token has its log-probabilities",
              r.returncode == 0 and res and res["completed"] == 2
              and all(q["logprob_tokens"] == q["output_tokens"] > 0 for q in res["requests"]),
              (r.returncode, res and [q["logprob_tokens"] for q in res["requests"]], r.stderr[-300:]))
        r, _ = bench(s, "--num-prompts", "1", "--logprobs", "21")
        check("--logprobs 21: exit 2", r.returncode == 2 and "--logprobs" in r.stderr, r.stderr[-200:])
        r, res = bench(s, "--num-prompts", "2", "--random-input-len", "16", "--random-output-len", "4", "--top-p", "1.5",
                       "--disable-progress")
        check("--top-p 1.5 is sent and refused by the server", r.returncode == 1 and res and res["failed"] == 2
              and any("top_p" in e for e in res["errors"]), (r.returncode, res and res["errors"]))
        r, _ = bench(s, "--num-prompts", "0")
        check("bad argument: exit 2", r.returncode == 2 and "--num-prompts" in r.stderr, r.stderr[-200:])
    finally:
        rc = s.stop()
    check("server stopped cleanly", rc == 0, rc)
    r = subprocess.run([sys.executable, BENCH, "--base-url", f"http://127.0.0.1:{s.port}", "--num-prompts", "1"],
                       capture_output=True, text=True, timeout=60)
    check("unreachable server: exit 2 with the address", r.returncode == 2 and "cannot reach" in r.stderr, r.stderr)
    print(f"{sum(T.results)} passed, {len(T.results) - sum(T.results)} failed")
    return 0 if all(T.results) else 1


if __name__ == "__main__":
    sys.exit(main())
