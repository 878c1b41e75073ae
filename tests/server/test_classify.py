#!/usr/bin/env python3
"""The classify task end to end: `llmserve serve` of tiny-qwen3-classify and tiny-qwen3-rerank
(make_tiny_qwen3.py ... classify: Qwen3ForSequenceClassification checkpoints of 3 labels with id2label and
of 1 label) answering vLLM's /classify, and /score and /rerank as a cross-encoder, against numpy float64
goldens of the head over the last position's final-norm hidden state; the request forms and vLLM's
errors. Prints one line per check and 'N passed, N failed'. LLMSERVE_TEST_BACKEND=cuda runs the servers on
one GPU in float32.
Usage: test_classify.py BUILD_DIR QWEN3_FIXTURES"""
import base64
import concurrent.futures
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (its Server and check; BUILD_DIR is argv[1] there too)

MODELS = os.path.join(ts.BUILD, "test-models")
GOLD = {m: json.load(open(os.path.join(sys.argv[2], "golden", f"tiny-qwen3-{m}.json"))) for m in ("classify", "rerank")}
TOL = 2e-5  # worst absolute difference of a probability (float32 against float64)
check = ts.check


def worst(a, b):
    return max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")


def classify_checks(s):
    g = GOLD["classify"]
    P = g["public"]
    st, r = s.post("/classify", {"input": [p["ids"] for p in P]})
    errs = [worst(d["probs"], P[d["index"]]["scores"]) for d in r["data"]] if st == 200 else [float("inf")]
    labels = [g["labels"][max(range(3), key=lambda i: p["scores"][i])] for p in P]
    check(f"classify: {len(P)} prompts in one request, softmax probabilities within {TOL} of the goldens (worst {max(errs):.2e})",
          st == 200 and len(errs) == len(P) and max(errs) <= TOL and [d["label"] for d in r["data"]] == labels
          and all(d["num_classes"] == 3 for d in r["data"]) and r["object"] == "list" and r["id"].startswith("classify-")
          and r["usage"]["prompt_tokens"] == sum(len(p["ids"]) for p in P) and r["usage"]["completion_tokens"] == 0,
          str(r)[:400])
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda p: s.post("/classify", {"input": p["ids"]}), P * 2))
    ok = all(st == 200 for st, _ in got)
    errs = [worst(r["data"][0]["probs"], P[i % len(P)]["scores"]) for i, (_, r) in enumerate(got)] if ok else [float("inf")]
    check(f"classify: {2 * len(P)} concurrent requests within {TOL} (worst {max(errs):.2e})", ok and max(errs) <= TOL,
          str([x for x in got if x[0] != 200][:1])[:300])
    st, r = s.post("/classify", {"input": P[1]["text"], "model": "tiny"})
    check("classify: a text is tokenized as the goldens' prompt; the label is id2label's",
          st == 200 and worst(r["data"][0]["probs"], P[1]["scores"]) <= TOL and r["data"][0]["label"] == labels[1]
          and r["model"] == "tiny", str(r)[:300])
    st, r = s.post("/classify", {"input": P[2]["ids"], "activation": False})
    check("classify: activation false gives the head's logits",
          st == 200 and worst(r["data"][0]["probs"], P[2]["logits"]) <= 1e-4 * max(map(abs, P[2]["logits"])), str(r)[:300])
    st, r = s.post("/pooling", {"input": [P[3]["ids"], P[4]["ids"]]})
    check("pooling API on a classifier: each prompt's label scores",
          st == 200 and r["id"].startswith("pool-") and [d["object"] for d in r["data"]] == ["pooling", "pooling"]
          and worst(r["data"][0]["data"], P[3]["scores"]) <= TOL and worst(r["data"][1]["data"], P[4]["scores"]) <= TOL
          and r["usage"]["prompt_tokens"] == len(P[3]["ids"]) + len(P[4]["ids"]), str(r)[:300])
    st, r = s.post("/pooling", {"input": P[3]["ids"], "encoding_format": "base64", "activation": False})
    got = list(struct.unpack("<3f", base64.b64decode(r["data"][0]["data"]))) if st == 200 else []
    check("pooling API on a classifier: base64, activation false (the logits)",
          st == 200 and worst(got, P[3]["logits"]) <= 1e-4 * max(map(abs, P[3]["logits"])), str(r)[:300])
    st, r = s.post("/classify", {"input": P[0]["ids"], "use_activation": "yes"})
    check("classify: a non-boolean use_activation refused", st == 400 and "'use_activation' must be a boolean" in r["error"]["message"], str(r)[:200])
    st, r = s.post("/classify", {"input": []})
    check("classify: an empty input refused", st == 400 and "'input' must be" in r["error"]["message"], str(r)[:200])
    st, r = s.post("/v1/embeddings", {"input": "hi"})
    check("embeddings on a classifier refused, pointing at /classify",
          st == 400 and "does not support Embeddings API" in r["error"]["message"] and "/classify" in r["error"]["message"], str(r)[:200])
    st, r = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    check("chat on a classifier refused", st == 400 and "does not support Chat Completions API" in r["error"]["message"], str(r)[:200])
    st, r = s.post("/score", {"text_1": "a", "text_2": "b"})
    check("score on a 3-label classifier refused (vLLM scores with one-label classifiers only)",
          st == 400 and "does not support Score API" in r["error"]["message"], str(r)[:200])


def rerank_checks(s):
    g = GOLD["rerank"]
    P = g["public"]
    st, r = s.post("/classify", {"input": [p["ids"] for p in P[:4]]})
    errs = [worst(d["probs"], P[d["index"]]["scores"]) for d in r["data"]] if st == 200 else [float("inf")]
    check(f"one label: classify gives the sigmoid of the head (worst {max(errs):.2e})",
          st == 200 and max(errs) <= TOL and all(d["num_classes"] == 1 and d["label"] == "LABEL_0" for d in r["data"]), str(r)[:300])
    pairs = g["pairs"]
    query, docs = P[pairs[0]["a"]]["text"], [P[p["b"]]["text"] for p in pairs]
    st, r = s.post("/v1/score", {"text_1": query, "text_2": docs})
    got = [d["score"] for d in r["data"]] if st == 200 else []
    check("score as a cross-encoder: each pair's texts as one sequence, the head's sigmoid (1:N)",
          st == 200 and worst(got, [p["score"] for p in pairs]) <= TOL and r["id"].startswith("score-")
          and r["usage"]["prompt_tokens"] == sum(len(P[p["a"]]["ids"]) + len(P[p["b"]]["ids"]) for p in pairs), str(r)[:300])
    st, r = s.post("/score", {"text_1": [query] * 3, "text_2": docs})
    check("score N:N as a cross-encoder", st == 200 and worst([d["score"] for d in r["data"]], [p["score"] for p in pairs]) <= TOL, str(r)[:300])
    st, r = s.post("/rerank", {"query": query, "documents": docs, "top_n": 2})
    order = sorted(range(3), key=lambda i: -pairs[i]["score"])[:2]
    check("rerank as a cross-encoder: the best two documents, best first",
          st == 200 and [x["index"] for x in r["results"]] == order
          and worst([x["relevance_score"] for x in r["results"]], [pairs[i]["score"] for i in order]) <= TOL
          and r["results"][0]["document"]["text"] == docs[order[0]], str(r)[:300])
    # vLLM's /invocations (SageMaker) dispatches by the body: query with documents a rerank, text_1 a score,
    # input the classify API on a classifier.
    st, ir = s.post("/invocations", {"query": query, "documents": docs, "top_n": 2})
    st2, isc = s.post("/invocations", {"text_1": [query] * 3, "text_2": docs})
    st3, icl = s.post("/invocations", {"input": P[0]["ids"]})
    check("/invocations: rerank, score and classify bodies answer as their APIs",
          st == st2 == st3 == 200 and [x["index"] for x in ir["results"]] == order
          and worst([d["score"] for d in isc["data"]], [p["score"] for p in pairs]) <= TOL
          and icl["object"] == "list" and "probs" in icl["data"][0], (str(ir)[:200], str(isc)[:200], str(icl)[:200]))
    st, r = s.post("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    check("score 2:3 refused", st == 400 and "1:1, 1:N or N:N" in r["error"]["message"], str(r)[:200])


def reranker_checks(s):
    """tiny-qwen3 (a causal LM) served as Qwen3-Reranker is: the sigmoid of its last logits' "yes" minus "no"."""
    prompts = json.load(open(os.path.join(sys.argv[2], "golden", "tiny-qwen3.json")))["public"]
    last = struct.unpack(f"<{8 * 151936}f", open(os.path.join(sys.argv[2], "golden", "tiny-qwen3.last_logits.f32"), "rb").read())
    vocab = json.load(open(os.path.join(ts.FIXTURES, "models", "tiny-qwen2", "tokenizer.json")))["model"]["vocab"]
    yes, no = vocab["yes"], vocab["no"]
    want = [1 / (1 + math.exp(-(last[i * 151936 + yes] - last[i * 151936 + no]))) for i in range(len(prompts))]
    st, r = s.post("/classify", {"input": [p["ids"] for p in prompts]})
    got = [d["probs"][0] for d in r["data"]] if st == 200 else []
    check(f"hf_overrides classifier_from_token [no, yes] (Qwen3-Reranker): sigmoid(yes - no) of the goldens' last logits "
          f"(worst {worst(got, want):.2e})", st == 200 and worst(got, want) <= TOL, str(r)[:300])
    st, r = s.post("/score", {"text_1": prompts[1]["text"], "text_2": ""})
    check("Qwen3-Reranker: score of a query with an empty document is its prompt's", st == 200 and abs(r["data"][0]["score"] - want[1]) <= TOL,
          str(r)[:300])


def main():
    os.makedirs(os.path.join(ts.BUILD, "test-out"), exist_ok=True)
    s = ts.Server(model=os.path.join(MODELS, "tiny-qwen3-classify.h5"))  # tp=2
    try:
        classify_checks(s)
    finally:
        s.stop()
    extra = ["-pp", "2"] if ts.BACKEND == "cpu" else []
    s = ts.Server(*extra, np=4 if ts.BACKEND == "cpu" else 2, model=os.path.join(MODELS, "tiny-qwen3-rerank.h5"))  # tp=2 pp=2
    try:
        rerank_checks(s)
    finally:
        s.stop()
    # load_format dummy from the classifier's config.json: its labels, a made-up score matrix (deterministic).
    s = ts.Server("--load-format", "dummy", model=os.path.join(sys.argv[2], "models", "tiny-qwen3-classify", "config.json"))
    try:
        st, r = s.post("/classify", {"input": [GOLD["classify"]["public"][1]["ids"]] * 2})
        ok = st == 200 and all(d["num_classes"] == 3 and abs(sum(d["probs"]) - 1) < 1e-6 and d["label"] in GOLD["classify"]["labels"]
                               for d in r["data"]) and r["data"][0]["probs"] == r["data"][1]["probs"]
        check("load_format dummy: a classifier of the config's 3 labels (softmax, id2label)", ok, str(r)[:300])
    finally:
        s.stop()
    s = ts.Server("--hf-overrides", '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"], '
                  '"is_original_qwen3_reranker": true}', model=os.path.join(MODELS, "tiny-qwen3.h5"))
    try:
        reranker_checks(s)
    finally:
        s.stop()
    return ts.summary()  # (a generative model's refusal of /classify: test_embeddings.py)


if __name__ == "__main__":
    sys.exit(main())
