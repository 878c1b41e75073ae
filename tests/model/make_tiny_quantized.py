#!/usr/bin/env python3
"""tiny-qwen2 quantized as AutoAWQ and AutoGPTQ save checkpoints, for llmserve-convert's dequantization,
with goldens of the quantized model (the layout of ../shared/fixtures/golden) from
bench/reference/bf16_rounding.py's float64 forward over the dequantized weights.

Each linear layer's matrix W [N, K] is quantized to 4-bit integers with zero points, in groups of G = 32
inputs (asymmetric min/max: scale = (max - min) / 15 in float16, zero = round(-min / scale)); the other
tensors (embedding, norms, q/k/v biases) are stored in float16, as such checkpoints hold them.
  - AWQ (quant_method awq, version gemm): qweight int32 [K, N/8], eight outputs a word in AutoAWQ's
    order (output 8j + ORDER[i] in nibble i, ORDER = 0 2 4 6 1 3 5 7), qzeros int32 [K/G, N/8] alike,
    scales float16 [K/G, N].
  - GPTQ (quant_method gptq, checkpoint_format gptq, desc_act): qweight int32 [K/8, N], eight inputs a
    word, lowest bits first; qzeros int32 [K/G, N/8] holding zero - 1 (the v1 format); scales float16
    [K/G, N]; g_idx int32 [K], each input's group, of a seeded permutation (act order: a group's inputs
    are not contiguous).
The reference dequantizes the packed words independently of the packing: vLLM's tests' unpacking (every
nibble by shift, then AWQ's reverse order 0 4 1 5 2 6 3 7 for AWQ).

  make_tiny_quantized.py FIXTURES OUT awq|gptq   writes OUT/models/tiny-qwen2-METHOD/ and OUT/golden/tiny-qwen2-METHOD.*
"""
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "reference"))
sys.path.insert(0, HERE)
import bf16_rounding as ref  # noqa: E402
from make_tiny_qwen3 import write_goldens, write_safetensors  # noqa: E402

G = 32
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
           "mlp.down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def quantize(w, groups):
    """w [N, K] to 4-bit codes [N, K], zero points [ngroups, N] and float16 scales [ngroups, N]; groups[k] is
    input k's group."""
    n_groups = groups.max() + 1
    codes = np.zeros(w.shape, dtype=np.int64)
    zeros = np.zeros((n_groups, w.shape[0]), dtype=np.int64)
    scales = np.zeros((n_groups, w.shape[0]), dtype=np.float16)
    for g in range(n_groups):
        cols = np.nonzero(groups == g)[0]
        part = w[:, cols]
        lo, hi = np.minimum(part.min(1), 0), np.maximum(part.max(1), 0)
        s = ((hi - lo) / 15).astype(np.float16)
        s = np.where(s == 0, np.float16(1e-3), s)
        z = np.clip(np.round(-lo / s.astype(np.float64)), 0, 15).astype(np.int64)
        codes[:, cols] = np.clip(np.round(part / s.astype(np.float64)[:, None]) + z[:, None], 0, 15)
        zeros[g], scales[g] = z, s
    return codes, zeros, scales


def pack_columns(v, order):
    """v [R, C] of 4-bit values to int32 [R, C/8]: word j's nibble i holds column 8j + order[i]."""
    R, C = v.shape
    out = np.zeros((R, C // 8), dtype=np.uint32)
    for i in range(8):
        out |= (v[:, np.arange(C // 8) * 8 + order[i]].astype(np.uint32) & 0xF) << (4 * i)
    return out.view(np.int32)


def pack_rows(v):
    """v [R, C] to int32 [R/8, C]: word (r, c)'s nibble i holds row 8r + i."""
    R, C = v.shape
    out = np.zeros((R // 8, C), dtype=np.uint32)
    for i in range(8):
        out |= (v[i::8].astype(np.uint32) & 0xF) << (4 * i)
    return out.view(np.int32)


def unpack_nibbles(words):
    """int32 [R, C] to its nibbles [R, 8C] in word order (nibble i of word j at 8j + i), as vLLM's tests do."""
    shifts = np.arange(0, 32, 4)
    return ((words.view(np.uint32)[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(words.shape[0], -1).astype(np.int64)


def dequantize_reference(method, t, K):
    if method == "awq":
        rev = (np.arange(t["qweight"].shape[1] * 8).reshape(-1, 8)[:, AWQ_REVERSE_ORDER]).reshape(-1)
        iw = unpack_nibbles(t["qweight"])[:, rev]           # [K, N]
        iz = unpack_nibbles(t["qzeros"])[:, rev]            # [K/G, N]
        grp = np.arange(K) // G
    else:
        # [K, N]: word (r, c)'s nibble i is input 8r + i
        iw = unpack_nibbles(np.ascontiguousarray(t["qweight"].T)).reshape(t["qweight"].shape[1], -1).T
        iz = unpack_nibbles(t["qzeros"]) + 1                # (v1: zero points stored less one)
        grp = t["g_idx"].astype(np.int64)
    s = t["scales"].astype(np.float64)
    return ((iw - iz[grp]) * s[grp]).T                      # [N, K]


def main():
    fixtures, out, method = sys.argv[1], sys.argv[2], sys.argv[3]
    if method not in ("awq", "gptq"):
        raise SystemExit("method: awq or gptq")
    name = f"tiny-qwen2-{method}"
    src = f"{fixtures}/models/tiny-qwen2"
    mdir, gdir = f"{out}/models/{name}", f"{out}/golden"
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    cfg = json.load(open(f"{src}/config.json"))
    W = ref.load_checkpoint(src)  # bf16 values as float64
    rng = np.random.default_rng(7)
    tensors, deq = {}, {}
    for k, v in W.items():
        stem = k[:-len(".weight")] if k.endswith(".weight") else None
        if stem and any(stem.endswith(l) for l in LINEARS):
            N, K = v.shape
            groups = np.arange(K) // G if method == "awq" else rng.permutation(K) // G
            codes, zeros, scales = quantize(v, groups)
            if method == "awq":
                t = {"qweight": pack_columns(codes.T, AWQ_ORDER), "qzeros": pack_columns(zeros, AWQ_ORDER), "scales": scales}
            else:
                t = {"qweight": pack_rows(codes.T), "qzeros": pack_columns(zeros - 1, list(range(8))), "scales": scales,
                     "g_idx": groups.astype(np.int32)}
            for part, a in t.items():
                tensors[f"{stem}.{part}"] = a
            deq[k] = dequantize_reference(method, t, K)
            assert np.abs(deq[k] - v).max() <= np.abs(v).max() / 15 + 1e-3, k  # (a quantization, not garbage)
        else:
            tensors[k] = v.astype(np.float16)
            deq[k] = tensors[k].astype(np.float64)
    qc = {"quant_method": "awq", "bits": 4, "group_size": G, "version": "gemm", "zero_point": True} if method == "awq" else \
         {"quant_method": "gptq", "bits": 4, "group_size": G, "desc_act": True, "sym": False, "checkpoint_format": "gptq"}
    json.dump(dict(cfg, torch_dtype="float16", quantization_config=qc), open(f"{mdir}/config.json", "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(f"{src}/{f}", f"{mdir}/{f}")
    write_safetensors(f"{mdir}/model.safetensors", tensors)
    write_goldens(fixtures, gdir, name, cfg["vocab_size"], ref.make_forward(cfg, deq), deq["model.embed_tokens.weight"],
                  f"float64 compute from the {method} checkpoint's dequantized weights")


if __name__ == "__main__":
    main()
