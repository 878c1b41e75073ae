#!/usr/bin/env python3
"""Runtime LoRA updating under load: a tensor-parallel server (2 ranks, CPU backend, max_cpu_loras 3,
max_loras 2) takes greedy completions (some streamed, some dropped by their client mid-answer) of the base
model, of an adapter loaded at start-up and of adapters that a churn thread loads and unloads meanwhile
(each one of the two test adapters under a name of its own; up to 6 served over the 3 slots). Checks:
  - every request is answered: 200, or 404 for a name not served when it came, or 400 when its adapter was
    unloaded between the request's arrival and its start; no 500, no hang;
  - every 200 answer equals llmserve generate's for the same prompt and the adapter the name held (a slot
    reused by another adapter never answers with the old one's weights or cached KV blocks);
  - every load and unload answers 200 (more adapters than max_cpu_loras slots: requests load theirs over
    the least recently used one no unfinished request uses);
  - afterwards /health is 200, no request runs or waits, and the KV cache is empty.
  test_lora_churn.py BUILD [FIXTURES]"""
import concurrent.futures
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (the suite's Server, paths and check())

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = ts.BUILD


def main():
    lora_dir = os.path.join(BUILD, "test-out", "churn-lora")
    subprocess.run([sys.executable, os.path.join(HERE, "..", "model", "make_tiny_lora.py"), ts.FIXTURES, "tiny-qwen2", lora_dir],
                   check=True, capture_output=True)
    paths = {"sql": f"{lora_dir}/sql", "terse": f"{lora_dir}/terse"}
    prompts = ["The capital of France is", "def add(a, b):", "The quick brown fox jumps over the lazy dog. " * 5,
               "Once upon a time"]
    # The reference: llmserve generate with both adapters loaded at start-up, every prompt for each model.
    inp, outp = (os.path.join(BUILD, "test-out", f"churn-{x}.jsonl") for x in ("in", "out"))
    lines = [{"prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **({"model": m} if m else {})}
             for m in (None, "sql", "terse") for p in prompts]
    open(inp, "w").write("".join(json.dumps(b) + "\n" for b in lines))
    subprocess.run([os.path.join(HERE, "..", "mpirun.sh"), "2", os.path.join(BUILD, "llmserve"), "generate", "--model", ts.MODEL,
                    *ts.BACKEND_ARGS, "-tp", "2", "--max-model-len", "512", "--enable-lora", "--max-loras", "2",
                    "--lora-modules", f"sql={paths['sql']}", f"terse={paths['terse']}", "--input", inp, "--output", outp],
                   check=True, capture_output=True)
    texts = [json.loads(l)["outputs"][0]["text"] for l in open(outp)]
    want = {(m or "base", p): t for (m, p), t in zip(((m, p) for m in (None, "sql", "terse") for p in prompts), texts)}

    s = ts.Server("--enable-lora", "--lora-modules", f"sql={paths['sql']}", "--max-loras", "2", "--max-cpu-loras", "3",
                  "--max-num-seqs", "8", env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    names = {"sql": "sql"}  # served name -> the adapter it holds (by the churn thread's own record)
    held = {}               # name -> adapter, for every name ever loaded (names are not reused)
    lock = threading.Lock()
    stop = threading.Event()
    load_status, unload_status = [], []

    def churn():
        k = 0
        while not stop.is_set():
            with lock:
                served = [n for n in names if n != "sql"]
            if served and (len(served) >= 5 or random.random() < 0.3):
                n = random.choice(served)
                with lock:
                    del names[n]
                st, _ = s.request("POST", "/v1/unload_lora_adapter", {"lora_name": n})
                unload_status.append(st)
            else:
                k += 1
                n, a = f"a{k}", random.choice(["sql", "terse"])
                with lock:
                    held[n] = a
                st, body = s.request("POST", "/v1/load_lora_adapter", {"lora_name": n, "lora_path": paths[a]})
                load_status.append((st, body[:120]))
                if st == 200:
                    with lock:
                        names[n] = a
            time.sleep(random.uniform(0.005, 0.05))

    results = []

    def client(i):
        rng = random.Random(i)
        for _ in range(25):
            with lock:
                pool = ["base", "sql"] + list(names) + [f"a{rng.randint(1, 40)}"]
            model = rng.choice(pool)
            p = rng.choice(prompts)
            body = {"prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **({} if model == "base" else {"model": model})}
            mode = rng.choice(["plain", "plain", "stream", "drop"])
            try:
                if mode == "plain":
                    st, r = s.post("/v1/completions", body, timeout=120)
                    results.append((model, p, st, r["choices"][0]["text"] if st == 200 else r.get("error", {}).get("message", r)))
                else:
                    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
                    c.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                              headers={"Content-Type": "application/json"})
                    resp = c.getresponse()
                    if mode == "drop":
                        resp.read(40)
                        c.close()
                        results.append((model, p, "dropped", None))
                        continue
                    raw = resp.read().decode()
                    c.close()
                    if resp.status != 200:
                        results.append((model, p, resp.status, json.loads(raw).get("error", {}).get("message")))
                        continue
                    ev = [json.loads(l[6:]) for l in raw.split("\n") if l.startswith("data: ") and l[6:] != "[DONE]"]
                    err = next((e["error"] for e in ev if "error" in e), None)
                    if err:  # (refused after the stream's headers: its error event carries the status)
                        results.append((model, p, err.get("code"), err.get("message")))
                        continue
                    results.append((model, p, 200, "".join(e["choices"][0]["text"] for e in ev if e.get("choices"))))
            except Exception as e:  # (a hang or a dropped connection of the server's own)
                results.append((model, p, "exception", repr(e)))

    try:
        t = threading.Thread(target=churn)
        t.start()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            list(pool.map(client, range(12)))
        stop.set()
        t.join()
        bad, wrong = [], []
        for model, p, st, out in results:
            if st == "dropped":
                continue
            if st == 200:
                adapter = "base" if model == "base" else "sql" if model == "sql" else held.get(model)
                if want.get((adapter, p)) != out:
                    wrong.append((model, adapter, p[:20], out, want.get((adapter, p))))
            elif not (st == 404 or (st == 400 and "was unloaded" in str(out))):
                bad.append((model, st, out))
        n200 = sum(1 for r in results if r[2] == 200)
        n200_rt = sum(1 for r in results if r[2] == 200 and r[0] not in ("base", "sql"))
        ts.check(f"LoRA churn: {len(results)} requests ({n200} answered 200) while {len(load_status)} loads and "
                 f"{len(unload_status)} unloads ran: every answer a 200, a 404 or an unloaded adapter's 400",
                 not bad and len(results) == 300, bad[:5])
        ts.check(f"LoRA churn: every 200 answer ({n200_rt} of adapters loaded at run time) is llmserve generate's for the "
                 "adapter its name held", n200_rt > 0 and not wrong, wrong[:5])
        with open(s.log.name) as f:
            slot_loads = sum(1 for l in f if "[rank 0]" in l and "loaded into slot" in l)
        ts.check(f"LoRA churn: loads and unloads answer 200 (past max_cpu_loras adapters too); some of each ran "
                 f"({slot_loads} adapter loads into the 3 slots)",
                 all(st == 200 for st, _ in load_status) and all(st == 200 for st in unload_status)
                 and len(load_status) >= 3 and len(unload_status) >= 3, (load_status[:8], unload_status[:8], slot_loads))
        deadline = time.time() + 30
        while time.time() < deadline and (s.metric("llmserve:num_requests_running") or s.metric("llmserve:num_requests_waiting")):
            time.sleep(0.1)
        ts.check("LoRA churn: afterwards healthy, nothing running or waiting, the KV cache empty",
                 s.request("GET", "/health")[0] == 200 and s.metric("llmserve:num_requests_running") == 0
                 and s.metric("llmserve:num_requests_waiting") == 0 and s.metric("llmserve:kv_cache_usage_perc") == 0,
                 [s.metric(m) for m in ("llmserve:num_requests_running", "llmserve:num_requests_waiting", "llmserve:kv_cache_usage_perc")])
    finally:
        stop.set()
        s.stop()
    return ts.summary()


if __name__ == "__main__":
    sys.exit(main())
