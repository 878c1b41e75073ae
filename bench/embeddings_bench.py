#!/usr/bin/env python3
"""Embedding throughput of a running llmserve (the pooling runner): N requests of L random token ids each,
C at a time, against /v1/embeddings; prints the wall time, prompt tokens/s and requests/s, and checks every
answer has one vector of the expected size.
  embeddings_bench.py PORT [--requests 256] [--prompt-len 512] [--concurrency 64] [--vocab 151936] [--dim D]"""
import argparse
import concurrent.futures
import http.client
import json
import random
import time

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--requests", type=int, default=256)
ap.add_argument("--prompt-len", type=int, default=512)
ap.add_argument("--concurrency", type=int, default=64)
ap.add_argument("--vocab", type=int, default=151936)
ap.add_argument("--dim", type=int, default=0, help="the vector size every answer must have (0: any)")
a = ap.parse_args()
rng = random.Random(0)
prompts = [[rng.randrange(1000, a.vocab) for _ in range(a.prompt_len)] for _ in range(a.requests)]


def one(ids):
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)
    c.request("POST", "/v1/embeddings", body=json.dumps({"input": ids}), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {body}")
    v = body["data"][0]["embedding"]
    if a.dim and len(v) != a.dim:
        raise RuntimeError(f"a vector of {len(v)} values, expected {a.dim}")
    return body["usage"]["prompt_tokens"]


one(prompts[0])  # (warm-up)
t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
    tokens = sum(ex.map(one, prompts))
dt = time.time() - t0
print(f"embeddings: {a.requests} requests x {a.prompt_len} tokens, {a.concurrency} at a time: {dt:.3f} s, "
      f"{tokens / dt:.0f} prompt tokens/s, {a.requests / dt:.1f} requests/s")
