#!/usr/bin/env python3
# Runtime LoRA updating on the CUDA backend: a server (float32) with sql loaded at start-up and terse
# loaded at run time (into the stacks its CUDA graphs read) answers as llmserve generate with both loaded at
# start-up; after unloading sql and loading terse again as terse2 into the freed slot, terse2 answers as
# terse. Prints the counts of equal answers.
#   python3 bench/lora_runtime_gpu.py BUILD FIXTURES OUT   (from the repository root, after a CUDA build and
#   llmserve-convert of FIXTURES/models/tiny-qwen2 to BUILD/test-models/tiny-qwen2.h5)
import concurrent.futures, json, os, subprocess, sys, time, urllib.request
build, fixtures, out = sys.argv[1:4]
model = f"{build}/test-models/tiny-qwen2.h5"
lora_dir = f"{build}/test-out/rt-lora"
subprocess.run([sys.executable, "tests/model/make_tiny_lora.py", fixtures, "tiny-qwen2", lora_dir], check=True, capture_output=True)
common = ["--model", model, "--backend", "cuda", "--dtype", "float32", "--max-model-len", "512", "--served-model-name", "tiny", "--enable-lora", "--max-loras", "2"]
bodies = [{"prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **({"model": m} if m else {})}
          for p in ("The capital of France is", "def add(a, b):", "The quick brown fox jumps over the lazy dog. " * 6)
          for m in (None, "sql", "terse")]
open(f"{out}/in.jsonl", "w").write("".join(json.dumps(b) + "\n" for b in bodies))
subprocess.run([f"{build}/llmserve", "generate", *common, "--lora-modules", f"sql={lora_dir}/sql", f"terse={lora_dir}/terse",
                "--input", f"{out}/in.jsonl", "--output", f"{out}/out.jsonl"], check=True, capture_output=True)
offline = [json.loads(l)["outputs"][0]["text"] for l in open(f"{out}/out.jsonl")]
log = open(f"{out}/rt-server.log", "w")
srv = subprocess.Popen([f"{build}/llmserve", *common, "--lora-modules", f"sql={lora_dir}/sql", "--max-cpu-loras", "2", "--port", "8431"],
                       stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:8431" + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
try:
    for _ in range(1200):
        try:
            urllib.request.urlopen("http://127.0.0.1:8431/health", timeout=1); break
        except Exception:
            time.sleep(0.1)
    print("load:", post("/v1/load_lora_adapter", {"lora_name": "terse", "lora_path": f"{lora_dir}/terse"}))
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        served = list(pool.map(lambda b: json.loads(post("/v1/completions", b)[1])["choices"][0]["text"], bodies))
    same = sum(a == b for a, b in zip(served, offline))
    print(f"runtime-loaded terse beside sql and the base model, batched in graphs: {same}/{len(bodies)} answers equal generate's")
    print("unload sql:", post("/v1/unload_lora_adapter", {"lora_name": "sql"}))
    print("load terse2:", post("/v1/load_lora_adapter", {"lora_name": "terse2", "lora_path": f"{lora_dir}/terse"}))
    t2 = [json.loads(post("/v1/completions", {**b, "model": "terse2"})[1])["choices"][0]["text"] for b in bodies if b.get("model") == "terse"]
    want = [o for b, o in zip(bodies, offline) if b.get("model") == "terse"]
    print(f"terse2 in the freed slot: {sum(a == b for a, b in zip(t2, want))}/{len(want)} answers equal terse's")
finally:
    srv.terminate(); srv.wait()
print([l.strip() for l in open(f"{out}/rt-server.log") if "CUDA graphs" in l or "LoRA" in l or "rror" in l][:8])
