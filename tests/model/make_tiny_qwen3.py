#!/usr/bin/env python3
"""A tiny Qwen3 checkpoint (Qwen3ForCausalLM: per-head q_norm / k_norm before RoPE, no q/k/v bias, an
explicit head_dim twice hidden / heads) in the Hugging Face layout, and goldens for it in the layout of
../shared/fixtures/golden, computed by bench/reference/bf16_rounding.py's float64 forward (the forward
that matches transformers' goldens of tiny-qwen2 and tiny-llama3 to 1e-6; its q_norm / k_norm follow
transformers' Qwen3Attention). Weights are seeded normal draws in bf16, scaled as tiny-qwen2's; the
tokenizer files and prompts are tiny-qwen2's (Qwen3 uses the Qwen2.5 vocabulary).

  make_tiny_qwen3.py FIXTURES OUT [yarn]    writes OUT/models/NAME/ and OUT/golden/NAME.{json,last_logits.f32},
                                             NAME tiny-qwen3, or with `yarn` tiny-qwen3-yarn: the same weights
                                             with YaRN rope_scaling (factor 4 over an original context of 128
                                             positions, so the golden prompts reach past it)
  make_tiny_qwen3.py FIXTURES OUT embed     writes OUT/models/tiny-qwen3-embed/ and OUT/golden/tiny-qwen3-embed.json:
                                             the same weights saved as Qwen3-Embedding is (a Sentence Transformers
                                             checkpoint: tensors without the "model." prefix, no lm_head, untied,
                                             modules.json with last-token pooling and Normalize), and per prompt
                                             the final-norm hidden state pooled LAST, MEAN and CLS, each normalized
  make_tiny_qwen3.py FIXTURES OUT classify  writes OUT/models/tiny-qwen3-classify/ and -rerank/ with their goldens:
                                             the same weights as Qwen3ForSequenceClassification (a `score` matrix
                                             over the last position's final-norm hidden state, no lm_head), of 3
                                             labels with id2label (softmax) and of 1 label (sigmoid: a
                                             cross-encoder); per prompt the logits and the activated scores, and for
                                             the reranker the scores of pairs of the prompts (their token ids one
                                             after the other: Qwen2's tokenizer adds no special tokens to a pair)
  make_tiny_qwen3.py FIXTURES OUT moe       writes tiny-qwen3-moe (Qwen3MoeForCausalLM: 8 experts of 32, 2 a token,
                                             norm_topk_prob, layer 2 dense by mlp_only_layers) and tiny-mixtral
                                             (MixtralForCausalLM: Llama's attention, 4 experts of 48, 2 a token, its
                                             block_sparse_moe.* names, untied lm_head) and tiny-qwen2-moe
                                             (Qwen2MoeForCausalLM: q/k/v biases, 6 experts of 24, 3 a token, not
                                             renormalized, a shared expert of 40 with its sigmoid gate, layers 1
                                             and 3 sparse by decoder_sparse_step 2, untied), each with its goldens
  make_tiny_qwen3.py FIXTURES OUT window    writes tiny-mistral-window (MistralForCausalLM: a sliding window of
                                             40 positions in every layer, head_dim 64 as the GPU's tensor-core
                                             kernels take it, untied) and tiny-qwen2-window (Qwen2ForCausalLM:
                                             q/k/v biases, use_sliding_window with a window of 12 from layer 2 on
                                             by max_window_layers 2, head_dim 16), each with its goldens
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "reference"))
import bf16_rounding as ref  # noqa: E402

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 32, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.02, "intermediate_size": 192, "max_position_embeddings": 40960, "max_window_layers": 4,
    "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def weights(cfg, seed=2026):
    rng = np.random.default_rng(seed)
    H, I, D = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"] * D, cfg["num_key_value_heads"] * D
    W = {"model.embed_tokens.weight": rng.normal(0, 0.5, (cfg["vocab_size"], H))}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        W[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, H)
        W[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.15, (nq, H))
        W[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.15, (nkv, H))
        W[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.1, (nkv, H))
        W[p + "self_attn.q_norm.weight"] = 1 + rng.normal(0, 0.2, D)
        W[p + "self_attn.k_norm.weight"] = 1 + rng.normal(0, 0.2, D)
        W[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.1, (H, nq))
        W[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, H)
        W[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.1, (I, H))
        W[p + "mlp.up_proj.weight"] = rng.normal(0, 0.1, (I, H))
        W[p + "mlp.down_proj.weight"] = rng.normal(0, 0.1, (H, I))
    W["model.norm.weight"] = 1 + rng.normal(0, 0.1, H)
    return {k: ref.bf16(v) for k, v in W.items()}  # (bf16 values, as the checkpoint holds them)


def write_safetensors(path, W, f32=()):
    """W's tensors in BF16 (their values are bf16 already), those named in f32 in F32; numpy arrays of float16
    or int32 as they are (F16, I32)."""
    header, blobs, at = {}, [], 0
    for name, v in W.items():
        kind = {np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}.get(getattr(v, "dtype", None))
        dtype = kind or ("F32" if name in f32 else "BF16")
        if kind:
            bits = np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()
        elif dtype == "F32":
            bits = np.asarray(v, dtype="<f4").tobytes()
        else:
            bits = (np.asarray(v, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [at, at + len(bits)]}
        blobs.append(bits)
        at += len(bits)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}


ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
ST_POOLING = {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
              "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
              "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}


def normalized(v):
    return (v / max(np.linalg.norm(v), 1e-12)).tolist()


def main_embed(fixtures, out):
    name = "tiny-qwen3-embed"
    cfg = dict(CONFIG, tie_word_embeddings=False)
    mdir, gdir = f"{out}/models/{name}", f"{out}/golden"
    os.makedirs(f"{mdir}/1_Pooling", exist_ok=True)
    os.makedirs(f"{mdir}/2_Normalize", exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    W = weights(CONFIG)
    json.dump(cfg, open(f"{mdir}/config.json", "w"), indent=2)
    json.dump(ST_MODULES, open(f"{mdir}/modules.json", "w"), indent=2)
    json.dump(ST_POOLING, open(f"{mdir}/1_Pooling/config.json", "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(f"{fixtures}/models/tiny-qwen2/{f}", f"{mdir}/{f}")
    write_safetensors(f"{mdir}/model.safetensors", {k[len("model."):]: v for k, v in W.items()})
    forward = ref.make_forward(CONFIG, W)  # (tied: its head is never read here)
    public = []
    for p in json.load(open(f"{fixtures}/golden/tiny-qwen2.json"))["public"]:
        ids = list(p["ids"])
        hidden = np.asarray(forward(ids, set(), hidden=True), dtype=np.float64)  # final-norm hidden states [T, H]
        public.append({"text": p.get("text", ""), "ids": ids, "last": normalized(hidden[-1]),
                       "mean": normalized(hidden.mean(0)), "cls": normalized(hidden[0]),
                       "last_raw": hidden[-1].tolist()})
    golden = {"model": f"models/{name}", "hidden_size": CONFIG["hidden_size"],
              "dtype": "float64 compute from bf16 weights",
              "reference": "bench/reference/bf16_rounding.py make_forward (numpy float64)", "public": public}
    json.dump(golden, open(f"{gdir}/{name}.json", "w"))
    print(f"{name}: {len(public)} prompts")


LABELS = {"0": "negative", "1": "neutral", "2": "positive"}


def main_classify(fixtures, out):
    W = weights(CONFIG)
    forward = ref.make_forward(CONFIG, W)
    prompts = json.load(open(f"{fixtures}/golden/tiny-qwen2.json"))["public"]
    rng = np.random.default_rng(7)
    H = CONFIG["hidden_size"]
    for name, labels in (("tiny-qwen3-classify", 3), ("tiny-qwen3-rerank", 1)):
        score = ref.bf16(rng.standard_normal((labels, H)) * 0.2)
        cfg = dict(CONFIG, architectures=["Qwen3ForSequenceClassification"], tie_word_embeddings=False,
                   pad_token_id=151643)
        if labels > 1:  # (transformers saves id2label, from which num_labels follows)
            cfg["id2label"] = LABELS
            cfg["label2id"] = {v: int(k) for k, v in LABELS.items()}
        else:
            cfg["num_labels"] = 1
        mdir, gdir = f"{out}/models/{name}", f"{out}/golden"
        os.makedirs(mdir, exist_ok=True)
        os.makedirs(gdir, exist_ok=True)
        json.dump(cfg, open(f"{mdir}/config.json", "w"), indent=2)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(f"{fixtures}/models/tiny-qwen2/{f}", f"{mdir}/{f}")
        write_safetensors(f"{mdir}/model.safetensors", dict(W, **{"score.weight": score}))
        sc = ref.load_safetensors(f"{mdir}/model.safetensors")["score.weight"]  # (as its reader sees it)

        def head(ids):
            z = sc @ np.asarray(forward(ids, set(), hidden=True), dtype=np.float64)[-1]
            act = 1 / (1 + np.exp(-z)) if labels == 1 else np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            return z.tolist(), act.tolist()

        public = []
        for p in prompts:
            z, act = head(list(p["ids"]))
            public.append({"text": p.get("text", ""), "ids": list(p["ids"]), "logits": z, "scores": act})
        golden = {"model": f"models/{name}", "num_labels": labels, "labels": [LABELS[str(i)] for i in range(labels)] if labels > 1 else None,
                  "dtype": "float64 compute from bf16 weights",
                  "reference": "bench/reference/bf16_rounding.py make_forward (numpy float64)", "public": public}
        if labels == 1:  # pairs (query = prompt 1, documents = prompts 2, 3, 4): the ids one after the other
            golden["pairs"] = [{"a": 1, "b": b, "score": head(list(prompts[1]["ids"]) + list(prompts[b]["ids"]))[1][0]}
                               for b in (2, 3, 4)]
        json.dump(golden, open(f"{gdir}/{name}.json", "w"))
        print(f"{name}: {len(public)} prompts")


def write_goldens(fixtures, gdir, name, vocab_size, forward, lm_head, dtype):
    """Goldens of model NAME in the layout of ../shared/fixtures/golden (GDIR/NAME.json and
    NAME.last_logits.f32) for tiny-qwen2's public prompts: `forward` (make_forward's) gives every position's
    final hidden state, lm_head [vocab, hidden] the logits; greedy continuations of 24 tokens."""
    public, last = [], []
    for p in json.load(open(f"{fixtures}/golden/tiny-qwen2.json"))["public"]:
        ids = list(p["ids"])
        hidden = forward(ids, set(), hidden=True)
        prefill = {"top_ids": [], "top_logits": [], "top_logprobs": []}
        for c in range(0, len(ids), 32):  # (logits 32 positions at a time: a row is 151,936 values)
            logits = hidden[c:c + 32] @ lm_head.T
            m = logits.max(-1, keepdims=True)
            lse = np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m
            part = np.argpartition(-logits, 5, axis=-1)[:, :5]
            top = np.take_along_axis(part, np.argsort(-np.take_along_axis(logits, part, -1), axis=-1, kind="stable"), -1)
            prefill["top_ids"] += top.tolist()
            prefill["top_logits"] += np.take_along_axis(logits, top, -1).tolist()
            prefill["top_logprobs"] += np.take_along_axis(logits - lse, top, -1).tolist()
        last.append(logits[-1])
        gen, margins, lps, row = [], [], [], logits[-1]
        for _ in range(24):
            two = np.argpartition(-row, 2)[:2]
            order = two[np.argsort(-row[two], kind="stable")]
            t = int(order[0])
            margins.append(float(row[order[0]] - row[order[1]]))
            lps.append(float(row[t] - (np.log(np.exp(row - row.max()).sum()) + row.max())))
            gen.append(t)
            row = forward(ids + gen, set())
        public.append({"text": p.get("text", ""), "ids": ids, "prefill": prefill,
                       "greedy": {"ids": gen, "margins": margins, "logprobs": lps}})
    golden = {"model": f"models/{name}", "vocab_size": vocab_size,
              "dtype": dtype,
              "reference": "bench/reference/bf16_rounding.py make_forward (numpy float64)",
              "public": public, "last_logits_file": f"{name}.last_logits.f32"}
    json.dump(golden, open(f"{gdir}/{name}.json", "w"))
    np.array(last, dtype="<f4").tofile(f"{gdir}/{name}.last_logits.f32")
    print(f"{name}: {len(public)} prompts; smallest greedy margin {min(min(x['greedy']['margins']) for x in public):.3g}")


MOE = dict(CONFIG, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2,
           moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[2])
MIXTRAL = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 48,
    "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2,
    "num_local_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 151936,
}


QWEN2_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
    "max_position_embeddings": 8192, "max_window_layers": 4, "num_attention_heads": 4, "num_hidden_layers": 4,
    "num_key_value_heads": 2, "num_experts": 6, "num_experts_per_tok": 3, "moe_intermediate_size": 24,
    "shared_expert_intermediate_size": 40, "norm_topk_prob": False, "decoder_sparse_step": 2, "mlp_only_layers": [],
    "qkv_bias": True, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": 4096,
    "use_sliding_window": False, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 151936,
}


def moe_weights(cfg, seed):
    """tiny-qwen3's draws for the attention (without q_norm / k_norm for Mixtral and Qwen2-MoE; with q/k/v
    biases for Qwen2-MoE), a router and experts in every sparse layer (Qwen3-MoE's names, or Mixtral's), and
    Qwen2-MoE's shared expert and its gate."""
    rng = np.random.default_rng(seed)
    mixtral, qwen2 = cfg["model_type"] == "mixtral", cfg["model_type"] == "qwen2_moe"
    base = dict(cfg, head_dim=cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]))
    W = {k: v for k, v in weights(base, seed).items() if not ((mixtral or qwen2) and ("q_norm" in k or "k_norm" in k))}
    H = cfg["hidden_size"]
    E = cfg.get("num_experts", cfg.get("num_local_experts"))
    M = cfg.get("moe_intermediate_size", cfg["intermediate_size"])
    S = cfg.get("shared_expert_intermediate_size", 0)
    step = cfg.get("decoder_sparse_step", 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        if qwen2:
            for n, rows in (("q", base["num_attention_heads"]), ("k", base["num_key_value_heads"]), ("v", base["num_key_value_heads"])):
                W[p + f"self_attn.{n}_proj.bias"] = ref.bf16(rng.normal(0, 0.1, rows * base["head_dim"]))
        if layer in cfg.get("mlp_only_layers", []) or (layer + 1) % step != 0:
            continue
        for n in ("gate_proj", "up_proj", "down_proj"):
            del W[p + f"mlp.{n}.weight"]
        moe = p + ("block_sparse_moe." if mixtral else "mlp.")
        W[moe + "gate.weight"] = ref.bf16(rng.normal(0, 0.3, (E, H)))
        for e in range(E):
            x = f"{moe}experts.{e}."
            names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
            W[x + names[0] + ".weight"] = ref.bf16(rng.normal(0, 0.15, (M, H)))
            W[x + names[1] + ".weight"] = ref.bf16(rng.normal(0, 0.15, (M, H)))
            W[x + names[2] + ".weight"] = ref.bf16(rng.normal(0, 0.15, (H, M)))
        if S:
            W[p + "mlp.shared_expert.gate_proj.weight"] = ref.bf16(rng.normal(0, 0.15, (S, H)))
            W[p + "mlp.shared_expert.up_proj.weight"] = ref.bf16(rng.normal(0, 0.15, (S, H)))
            W[p + "mlp.shared_expert.down_proj.weight"] = ref.bf16(rng.normal(0, 0.15, (H, S)))
            W[p + "mlp.shared_expert_gate.weight"] = ref.bf16(rng.normal(0, 0.3, (1, H)))
    if not cfg["tie_word_embeddings"]:
        W["lm_head.weight"] = ref.bf16(rng.normal(0, 0.5, (cfg["vocab_size"], H)))
    return W


def write_model_and_goldens(fixtures, out, name, cfg, W):
    """OUT/models/NAME (config, generation config, tiny-qwen2's tokenizer, W as safetensors) and its goldens,
    the numpy float64 forward over the checkpoint's values."""
    mdir, gdir = f"{out}/models/{name}", f"{out}/golden"
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    json.dump(cfg, open(f"{mdir}/config.json", "w"), indent=2)
    json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643]}, open(f"{mdir}/generation_config.json", "w"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(f"{fixtures}/models/tiny-qwen2/{f}", f"{mdir}/{f}")
    write_safetensors(f"{mdir}/model.safetensors", W)
    R = ref.load_safetensors(f"{mdir}/model.safetensors")
    lm_head = R["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else R["lm_head.weight"]
    write_goldens(fixtures, gdir, name, cfg["vocab_size"], ref.make_forward(cfg, R), lm_head,
                  "float64 compute from bf16 weights")


def main_moe(fixtures, out):
    for name, cfg, seed in (("tiny-qwen3-moe", MOE, 2027), ("tiny-mixtral", MIXTRAL, 2028), ("tiny-qwen2-moe", QWEN2_MOE, 2029)):
        write_model_and_goldens(fixtures, out, name, cfg, moe_weights(cfg, seed))


MISTRAL_WINDOW = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 64, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
    "intermediate_size": 128, "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 4,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 40,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 151936,
}
QWEN2_WINDOW = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
    "max_position_embeddings": 32768, "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 4,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 12,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": True,
    "vocab_size": 151936,
}


def main_window(fixtures, out):
    for name, cfg, seed in (("tiny-mistral-window", MISTRAL_WINDOW, 2030), ("tiny-qwen2-window", QWEN2_WINDOW, 2031)):
        base = dict(cfg, head_dim=cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]))
        W = {k: v for k, v in weights(base, seed).items() if "q_norm" not in k and "k_norm" not in k}
        rng = np.random.default_rng(seed + 100)
        if cfg["model_type"] == "qwen2":
            for layer in range(cfg["num_hidden_layers"]):
                for n, heads in (("q", base["num_attention_heads"]), ("k", base["num_key_value_heads"]),
                                 ("v", base["num_key_value_heads"])):
                    W[f"model.layers.{layer}.self_attn.{n}_proj.bias"] = ref.bf16(rng.normal(0, 0.1, heads * base["head_dim"]))
        if not cfg["tie_word_embeddings"]:
            W["lm_head.weight"] = ref.bf16(rng.normal(0, 0.5, (cfg["vocab_size"], cfg["hidden_size"])))
        write_model_and_goldens(fixtures, out, name, cfg, W)


def main():
    fixtures, out = sys.argv[1], sys.argv[2]
    if sys.argv[3:] == ["window"]:
        return main_window(fixtures, out)
    if sys.argv[3:] == ["moe"]:
        return main_moe(fixtures, out)
    if sys.argv[3:] == ["embed"]:
        return main_embed(fixtures, out)
    if sys.argv[3:] == ["classify"]:
        return main_classify(fixtures, out)
    yarn = sys.argv[3:] == ["yarn"]
    name = "tiny-qwen3-yarn" if yarn else "tiny-qwen3"
    cfg = dict(CONFIG, rope_scaling=YARN) if yarn else CONFIG
    mdir, gdir = f"{out}/models/{name}", f"{out}/golden"
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    W = weights(CONFIG)
    lm_head = W["model.embed_tokens.weight"]
    json.dump(cfg, open(f"{mdir}/config.json", "w"), indent=2)
    json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643]}, open(f"{mdir}/generation_config.json", "w"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(f"{fixtures}/models/tiny-qwen2/{f}", f"{mdir}/{f}")
    write_safetensors(f"{mdir}/model.safetensors", W)
    # The checkpoint as its reader sees it (bf16 values as float64).
    forward = ref.make_forward(cfg, ref.load_safetensors(f"{mdir}/model.safetensors"))
    write_goldens(fixtures, gdir, name, CONFIG["vocab_size"], forward, lm_head, "float64 compute from bf16 weights")


if __name__ == "__main__":
    main()
