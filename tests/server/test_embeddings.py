#!/usr/bin/env python3
"""The pooling runner end to end: `llmserve serve` of tiny-qwen3-embed (make_tiny_qwen3.py ... embed: a
Sentence Transformers checkpoint as Qwen3-Embedding is saved) answering /v1/embeddings, against the numpy
float64 goldens of its final-norm hidden states (LAST, MEAN and CLS pooling, normalized), on a tp=2 server
and on a tp=2 pp=2 one whose prompts run in chunks over a small KV cache; the request forms (texts, token
ids, chat messages, base64, dimensions, normalize, truncation) and vLLM's errors. Prints one line per
check and 'N passed, N failed'. LLMSERVE_TEST_BACKEND=cuda runs the servers on one GPU in float32.
Usage: test_embeddings.py BUILD_DIR QWEN3_FIXTURES"""
import base64
import concurrent.futures
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (its Server and check; BUILD_DIR is argv[1] there too)

MODEL = os.path.join(ts.BUILD, "test-models", "tiny-qwen3-embed.h5")
GOLDEN = json.load(open(os.path.join(sys.argv[2], "golden", "tiny-qwen3-embed.json")))["public"]
TOL = 2e-5  # worst absolute difference of a unit vector's component (float32 against float64)
check = ts.check


def worst(a, b):
    return max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")


def unit(v):
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def embed(s, body):
    st, r = s.post("/v1/embeddings", body)
    return st, r


def goldens_match(s, key, name, **extra):
    """Every golden prompt (by token ids, all in one request, and concurrently one each) against the golden `key`."""
    st, r = embed(s, {"input": [p["ids"] for p in GOLDEN], **extra})
    errs = [worst(d["embedding"], GOLDEN[d["index"]][key]) for d in r["data"]] if st == 200 else [float("inf")]
    check(f"{name}: {len(GOLDEN)} prompts in one request within {TOL} of the goldens (worst {max(errs):.2e})",
          st == 200 and len(errs) == len(GOLDEN) and max(errs) <= TOL, str(r)[:300])
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda p: embed(s, {"input": p["ids"], **extra}), GOLDEN * 2))
    ok = all(st == 200 for st, _ in got)
    errs = [worst(r["data"][0]["embedding"], GOLDEN[i % len(GOLDEN)][key]) for i, (_, r) in enumerate(got)] if ok else [float("inf")]
    check(f"{name}: {2 * len(GOLDEN)} concurrent requests within {TOL} (worst {max(errs):.2e})", ok and max(errs) <= TOL,
          str([g for g in got if g[0] != 200][:1])[:300])


def main():
    os.makedirs(os.path.join(ts.BUILD, "test-out"), exist_ok=True)
    s = ts.Server(model=MODEL)  # tp=2; the checkpoint's own pooler: LAST, normalized
    try:
        goldens_match(s, "last", "LAST (the Sentence Transformers config)")
        st, r = s.post("/pooling", {"input": [GOLDEN[5]["ids"], GOLDEN[6]["ids"]]})
        check("pooling API on an embedding model: the embeddings, as {index, object pooling, data}",
              st == 200 and r["id"].startswith("pool-") and [d["object"] for d in r["data"]] == ["pooling", "pooling"]
              and worst(r["data"][0]["data"], GOLDEN[5]["last"]) <= TOL and worst(r["data"][1]["data"], GOLDEN[6]["last"]) <= TOL,
              str(r)[:300])
        st, r = embed(s, {"input": "The capital of France is", "model": "tiny"})
        p = GOLDEN[1]
        check("a text is tokenized as the goldens' prompt and embedded", st == 200 and worst(r["data"][0]["embedding"], p["last"]) <= TOL
              and r["usage"] == {"prompt_tokens": len(p["ids"]), "total_tokens": len(p["ids"]), "completion_tokens": 0}
              and r["object"] == "list" and r["data"][0]["object"] == "embedding" and r["id"].startswith("embd-")
              and r["model"] == "tiny", str(r)[:400])
        st, r = embed(s, {"input": p["ids"], "normalize": False})
        check("normalize false: the raw final-norm hidden state", st == 200 and worst(r["data"][0]["embedding"], p["last_raw"]) <= 1e-4 * max(map(abs, p["last_raw"])),
              str(r)[:300])
        st, r = embed(s, {"input": [p["ids"], GOLDEN[2]["ids"]], "encoding_format": "base64"})
        ok = st == 200
        if ok:
            vecs = [list(struct.unpack(f"<{len(GOLDEN[0]['last'])}f", base64.b64decode(d["embedding"]))) for d in r["data"]]
            ok = worst(vecs[0], p["last"]) <= TOL and worst(vecs[1], GOLDEN[2]["last"]) <= TOL
        check("encoding_format base64: little-endian float32, as OpenAI's clients decode it", ok, str(r)[:300])
        # OpenAI's SDK asks for base64 by default and decodes it.
        try:
            cl = ts.import_openai().OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none")
            got = cl.embeddings.create(model="tiny", input=[GOLDEN[1]["text"], GOLDEN[2]["text"]])
            check("openai client: embeddings (base64 by default)", worst(list(got.data[0].embedding), GOLDEN[1]["last"]) <= TOL
                  and worst(list(got.data[1].embedding), GOLDEN[2]["last"]) <= TOL and got.usage.prompt_tokens == len(GOLDEN[1]["ids"]) + len(GOLDEN[2]["ids"]),
                  str(got)[:300])
            got = cl.embeddings.create(model="tiny", input=GOLDEN[3]["ids"], encoding_format="float")
            check("openai client: embeddings as floats", worst(got.data[0].embedding, GOLDEN[3]["last"]) <= TOL, str(got)[:300])
        except ImportError:
            print("SKIP openai client: the openai package cannot be installed here")
        # The chat form renders the messages without a generation prompt (vLLM's default for embeddings).
        msgs = [{"role": "user", "content": "Hello there"}]
        st1, t = s.post("/tokenize", {"messages": msgs, "add_generation_prompt": False})
        st2, a = embed(s, {"messages": msgs})
        st3, b = embed(s, {"input": t.get("tokens", []) if st1 == 200 else []})
        check("messages: the rendered prompt's embedding", st1 == st2 == st3 == 200 and worst(a["data"][0]["embedding"], b["data"][0]["embedding"]) <= TOL
              and a["usage"]["prompt_tokens"] == t["count"], f"{st1} {st2} {st3} {str(a)[:200]}")
        st, r = embed(s, {"input": GOLDEN[4]["ids"], "truncate_prompt_tokens": 20})
        st2, r2 = embed(s, {"input": GOLDEN[4]["ids"][-20:]})
        check("truncate_prompt_tokens keeps the last tokens", st == st2 == 200 and worst(r["data"][0]["embedding"], r2["data"][0]["embedding"]) <= TOL
              and r["usage"]["prompt_tokens"] == 20, str(r)[:200])
        # vLLM's score and rerank APIs on an embedding model: cosine similarities of the pairs' vectors.
        dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 (the goldens are unit vectors)
        texts = [p["text"] for p in GOLDEN[:4]]
        want = [dot(GOLDEN[1]["last"], GOLDEN[k]["last"]) for k in (0, 2, 3)]
        for path in ("/score", "/v1/score"):
            st, r = s.post(path, {"text_1": texts[1], "text_2": [texts[0], texts[2], texts[3]]})
            got = [d["score"] for d in r.get("data", [])] if st == 200 else []
            check(f"{path}: 1:N cosine similarities of the goldens' vectors", st == 200 and len(got) == 3
                  and max(abs(a - b) for a, b in zip(got, want)) <= TOL and [d["index"] for d in r["data"]] == [0, 1, 2]
                  and r["data"][0]["object"] == "score" and r["object"] == "list" and r["id"].startswith("score-")
                  and r["usage"]["prompt_tokens"] == 3 * len(GOLDEN[1]["ids"]) + sum(len(GOLDEN[k]["ids"]) for k in (0, 2, 3)),
                  str(r)[:300])
        st, r = s.post("/v1/score", {"text_1": [texts[0], texts[1]], "text_2": [texts[2], texts[3]]})
        check("/v1/score: N:N pairs", st == 200 and abs(r["data"][0]["score"] - dot(GOLDEN[0]["last"], GOLDEN[2]["last"])) <= TOL
              and abs(r["data"][1]["score"] - dot(GOLDEN[1]["last"], GOLDEN[3]["last"])) <= TOL, str(r)[:300])
        order = sorted(range(3), key=lambda k: -want[k])
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            st, r = s.post(path, {"query": texts[1], "documents": [texts[0], texts[2], texts[3]], "top_n": 2})
            res = r.get("results", []) if st == 200 else []
            check(f"{path}: the documents best first, top_n of them, with their texts", st == 200 and len(res) == 2
                  and [x["index"] for x in res] == order[:2] and all(abs(x["relevance_score"] - want[x["index"]]) <= TOL for x in res)
                  and res[0]["document"]["text"] == [texts[0], texts[2], texts[3]][order[0]] and r["id"].startswith("rerank-")
                  and r["usage"]["total_tokens"] > 0, str(r)[:300])
        # Errors, as vLLM answers them.
        for name, path, body, status, needle in [
            ("completions on a pooling model", "/v1/completions", {"prompt": "hi"}, 400, "does not support Completions API"),
            ("chat on a pooling model", "/v1/chat/completions", {"messages": msgs}, 400, "does not support Chat Completions API"),
            ("responses on a pooling model", "/v1/responses", {"input": "hi"}, 400, "does not support Responses API"),
            ("dimensions without Matryoshka", "/v1/embeddings", {"input": "hi", "dimensions": 8}, 400, "does not support matryoshka representation"),
            ("an empty input", "/v1/embeddings", {"input": ""}, 400, "empty"),
            ("an empty list", "/v1/embeddings", {"input": []}, 400, "'input' must be"),
            ("no input", "/v1/embeddings", {"model": "tiny"}, 400, "'input' is required"),
            ("a token id outside the vocabulary", "/v1/embeddings", {"input": [1, 999999]}, 400, "input token ids"),
            ("a bad encoding_format", "/v1/embeddings", {"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
            ("an unknown model", "/v1/embeddings", {"input": "hi", "model": "other"}, 404, "does not exist"),
            ("an input longer than max_model_len", "/v1/embeddings", {"input": list(range(1, 600))}, 400,
             "maximum context length is 512 tokens. However, you requested 599 tokens in the input for embedding generation"),
            ("input and messages together", "/v1/embeddings", {"input": "hi", "messages": msgs}, 400, "either"),
            ("score pairs 2:3", "/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "Input lengths must be either 1:1, 1:N or N:N"),
            ("score without second texts", "/v1/score", {"text_1": "a", "text_2": []}, 400, "At least one text_pair element must be given"),
            ("rerank without a query", "/v1/rerank", {"documents": ["a"]}, 400, "'query' is required"),
            ("a priority past 32 bits", "/v1/embeddings", {"input": "hi", "priority": 10**12}, 400, "priority"),
            ("a priority without priority scheduling", "/v1/embeddings", {"input": "hi", "priority": 1}, 400,
             "Priority scheduling is not enabled"),
        ]:
            st, r = s.post(path, body)
            msg = r["error"]["message"] if isinstance(r, dict) and "error" in r else str(r)
            check(f"refused: {name} ({status})", st == status and needle in msg, f"{st} {msg[:200]}")
        st, _ = s.request("GET", "/health")
        check("the server is healthy after the errors", st == 200)
        st, t = s.post("/tokenize", {"prompt": GOLDEN[1]["text"]})
        check("/tokenize serves on a pooling model (the goldens' ids)", st == 200 and t["tokens"] == GOLDEN[1]["ids"], str(t)[:200])
    finally:
        s.stop()

    # MEAN over chunks of a tp=2 pp=2 server with a small KV cache and a small step budget: the 297-token
    # prompt runs in seven chunks, concurrent prompts wait for blocks; Matryoshka by hf_overrides.
    s = ts.Server("--pooler-config", '{"pooling_type": "MEAN"}', "--hf-overrides", '{"matryoshka_dimensions": [16, 32, 64]}',
                  "--max-num-batched-tokens", "48", "--max-num-seqs", "8", "--num-gpu-blocks-override", "40", "--max-model-len", "320", "--block-size", "8",
                  "--swap-space", "0", "-pp", "2", np=4, tp=2, model=MODEL) if ts.BACKEND == "cpu" else \
        ts.Server("--pooler-config", '{"pooling_type": "MEAN"}', "--hf-overrides", '{"matryoshka_dimensions": [16, 32, 64]}',
                  "--max-num-batched-tokens", "48", "--max-num-seqs", "8", "--num-gpu-blocks-override", "40", "--max-model-len", "320", "--block-size", "8", model=MODEL)
    try:
        goldens_match(s, "mean", "MEAN, pp=2, chunked prompts, a small KV cache")
        st, r = embed(s, {"input": GOLDEN[4]["ids"], "dimensions": 16})
        check("dimensions 16 (Matryoshka): the first 16 values, then normalized",
              st == 200 and len(r["data"][0]["embedding"]) == 16 and worst(r["data"][0]["embedding"], unit(GOLDEN[4]["mean"][:16])) <= TOL,
              str(r)[:300])
        st, r = embed(s, {"input": "hi", "dimensions": 24})
        check("dimensions outside matryoshka_dimensions refused", st == 400 and "only supports [16, 32, 64] matryoshka dimensions" in r["error"]["message"],
              str(r)[:300])
    finally:
        s.stop()

    # (with vLLM launch flags: uvicorn_log_level warning silences the access log; the others are accepted)
    first_log = s.log.name
    s = ts.Server("--pooler-config", '{"pooling_type": "CLS", "normalize": true}', "--uvicorn-log-level", "warning",
                  "--disable-fastapi-docs", "--disable-frontend-multiprocessing", "--disable-custom-all-reduce",
                  "--enable-log-requests", "--chat-template-content-format", "string", "--data-parallel-size", "1", model=MODEL)
    try:
        goldens_match(s, "cls", "CLS")
    finally:
        s.stop()
    quiet, loud = open(s.log.name).read(), open(first_log).read()
    check("uvicorn_log_level warning: no access lines (the default server has them)",
          " access POST /v1/embeddings 200" in loud and " access " not in quiet, quiet[-300:])

    # A generative model serves no embeddings unless asked to (runner pooling / convert embed).
    s = ts.Server(model=os.path.join(ts.BUILD, "test-models", "tiny-qwen3.h5"))
    try:
        st, r = embed(s, {"input": "hi"})
        check("embeddings on a generative model refused (400)", st == 400 and "does not support Embeddings API" in r["error"]["message"], str(r)[:200])
        st, r = s.post("/v1/score", {"text_1": "a", "text_2": "b"})
        check("score on a generative model refused (400)", st == 400 and "does not support Score API" in r["error"]["message"], str(r)[:200])
        st, r = s.post("/classify", {"input": "hi"})
        check("classify on a generative model refused (400)", st == 400 and "does not support Classification API" in r["error"]["message"], str(r)[:200])
        st, r = s.post("/pooling", {"input": "hi"})
        check("pooling on a generative model refused (400)", st == 400 and "does not support Pooling API" in r["error"]["message"], str(r)[:200])
    finally:
        s.stop()
    s = ts.Server("--convert", "embed", model=os.path.join(ts.BUILD, "test-models", "tiny-qwen3.h5"))
    try:
        # tiny-qwen3 has the same weights: convert embed pools its last position (vLLM's default), normalized.
        st, r = embed(s, {"input": GOLDEN[3]["ids"]})
        check("convert embed: a generative checkpoint's LAST pooling", st == 200 and worst(r["data"][0]["embedding"], GOLDEN[3]["last"]) <= TOL, str(r)[:200])
    finally:
        s.stop()
    return ts.summary()


if __name__ == "__main__":
    sys.exit(main())
