#!/usr/bin/env python3
"""Where a bf16 forward's error against the fp32 goldens comes from (issue 6's bf16 golden bound).

The fixtures' goldens are transformers' float32 forward of checkpoints whose weights are bf16 already,
so a bf16 forward with the same weights differs from them only where it rounds activations. This
script recomputes each public prompt's last-position logits in float64 with numpy from the
checkpoint (no torch needed), rounding to bf16 exactly where llmserve's bf16 path does:
  h      the RMSNorm outputs that feed the q/k/v and gate/up GEMMs (GEMM operands are bf16)
  kv     the keys (after RoPE) and values written to the bf16 KV cache
  attn   the attention output that feeds o_proj
  act    SiLU(gate) * up, which feeds down_proj
  final  the final RMSNorm output that feeds lm_head
(the residual stream, GEMM accumulation, RoPE, softmax and the logits stay in float32 there), and
each alone, and all but one, and prints the worst relative L2 error over the prompts.
With all of them it gives what the GPU's golden check measures (tiny-qwen2: 1.140e-2 both), so that
error is the rounding points' own, not the kernels'.

  python3 bench/reference/bf16_rounding.py ../shared/fixtures tiny-qwen2
  python3 bench/reference/bf16_rounding.py ../shared/fixtures tiny-qwen2 --check
With --check it only verifies its own forward without rounding against the goldens (relative L2 under
1e-5 on every prompt; exit 1 otherwise): ctest bf16_rounding_reference_MODEL.

  python3 bench/reference/bf16_rounding.py ../shared/fixtures tiny-qwen2 --fp8 OUT.f32 [--tp N]
With --fp8 it writes the float64 forward's last-position logits (as float32, the goldens' layout) with
the layers' matrices quantized as `quantization: fp8` quantizes them: FP8 E4M3 (round to nearest,
ties to even, saturating at 448; rounded here by a search over the 127 non-negative finite values, not
by llmserve's bit arithmetic) with the smallest power-of-two scale per row that brings the row's largest
magnitude within 448. With --tp N the row-parallel matrices (o_proj, down_proj) are quantized per block
of columns a rank of a tensor group of N holds, as each rank quantizes its own shard
(tests/model/run_fp8.sh compares llmserve's CPU backend with this).

  python3 bench/reference/bf16_rounding.py ../shared/fixtures tiny-qwen2 --fp8-kv OUT.f32
With --fp8-kv it writes the logits of the unquantized model whose keys (after RoPE) and values are
rounded to E4M3 with scale 1 (saturating at 448) before attention, as `kv_cache_dtype: fp8` stores them
(tests/model/run_fp8_kv.sh).

  python3 bench/reference/bf16_rounding.py ../shared/fixtures tiny-qwen2 --points h,attn,act,final,kv8 OUT.f32 [--half]
With --points it writes the logits with rounding at the listed points (those above, and kv8: the keys and
values to E4M3, as --fp8-kv; or none), to float16 instead of bf16 with --half: what the GPU's bf16 / fp16
/ float32 path with or without `kv_cache_dtype: fp8` computes (tests/cuda/run_fp8_kv_gpu.sh).

  python3 bench/reference/bf16_rounding.py FIXTURES MODEL --kv8-sensitivity
With --kv8-sensitivity it prints how far the E4M3-cache forward's logits move when its keys and values
are perturbed by a relative amount a (Gaussian, 3 seeds) before they are rounded to E4M3: the perturbation
alone changes nothing, so what moves the logits is codes that change to a neighbouring value. It shows
how strongly a model amplifies the tiny differences (float32 accumulation order) between two correct
forwards once its cache is E4M3 (the float32 bound of run_fp8_kv_gpu.sh).
"""
import json
import struct
import sys

import numpy as np


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        s, e = v["data_offsets"]
        data = raw[8 + n + s:8 + n + e]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F32":
            arr = np.frombuffer(data, dtype="<f4")
        else:
            raise SystemExit(f"{name}: dtype {v['dtype']} not handled")
        out[name] = arr.reshape(v["shape"]).astype(np.float64)
    return out


def load_checkpoint(mdir):
    """Every tensor of a Hugging Face checkpoint directory: model.safetensors, or the shards its index names."""
    try:
        files = sorted(set(json.load(open(f"{mdir}/model.safetensors.index.json"))["weight_map"].values()))
    except FileNotFoundError:
        files = ["model.safetensors"]
    W = {}
    for f in files:
        W.update(load_safetensors(f"{mdir}/{f}"))
    return W


def bf16(x):
    """Round to the nearest bf16 (ties to even), returned as float64."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def f16(x):
    """Round to the nearest float16 (ties to even), returned as float64."""
    return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


E4M3_VALUES = np.array([(m / 512.0) if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
                        for e in range(16) for m in range(8)][:127])  # codes 0..126: ascending


def e4m3(x):
    """Round to the nearest E4M3 value (ties to the even code), saturating at +-448."""
    a = np.minimum(np.abs(x), 448.0)
    i = np.clip(np.searchsorted(E4M3_VALUES, a), 1, 126)
    lo, hi = E4M3_VALUES[i - 1], E4M3_VALUES[i]
    up = (a - lo > hi - a) | ((a - lo == hi - a) & (i % 2 == 0))
    return np.sign(x) * E4M3_VALUES[np.where(up, i, i - 1)]


def fp8_rows(w):
    """w with each row quantized to E4M3 times the smallest power-of-two scale 2^e (e >= -126) for which
    the row's largest magnitude over 2^e is at most 448."""
    out = np.empty_like(w)
    for r, row in enumerate(w):
        amax = np.abs(row).max()
        e = -126 if amax < 2.0 ** -126 else int(np.ceil(np.log2(amax / 448.0)))
        while e > -126 and amax / 2.0 ** (e - 1) <= 448.0:
            e -= 1
        while amax / 2.0 ** e > 448.0:
            e += 1
        out[r] = e4m3(row / 2.0 ** e) * 2.0 ** e
    return out


def inv_freq(cfg, D):
    inv = 1.0 / cfg.get("rope_theta", 10000.0) ** (np.arange(0, D, 2) / D)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "yarn":  # (transformers 5's _compute_yarn_parameters)
        factor, base = rs["factor"], cfg.get("rope_theta", 10000.0)
        ctx = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]

        def correction_dim(rotations):
            return D * np.log(ctx / (rotations * 2 * np.pi)) / (2 * np.log(base))
        low, high = correction_dim(rs.get("beta_fast") or 32), correction_dim(rs.get("beta_slow") or 1)
        if rs.get("truncate", True):
            low, high = np.floor(low), np.ceil(high)
        low, high = max(low, 0), min(high, D - 1)
        if low == high:
            high += 0.001
        keep = 1 - np.clip((np.arange(D // 2) - low) / (high - low), 0, 1)
        inv = inv / factor * (1 - keep) + inv * keep
    return inv


def attention_factor(cfg):
    """What RoPE's cosines and sines are multiplied by (yarn; 1 otherwise)."""
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) != "yarn":
        return 1.0
    if rs.get("attention_factor"):
        return rs["attention_factor"]
    factor = rs["factor"]

    def mscale(m):
        return 1.0 if factor <= 1 else 0.1 * m * np.log(factor) + 1.0
    if rs.get("mscale") and rs.get("mscale_all_dim"):
        return mscale(rs["mscale"]) / mscale(rs["mscale_all_dim"])
    return mscale(1.0)


def sliding_window_layers(cfg):
    """(window, layers): the sliding window of the config's attention and the layers that have it, as
    transformers' configs and attention modules decide (llmserve's ModelSpec the same): in use where the
    Qwen family's use_sliding_window says (Mistral and Mixtral: always) and the window is shorter than
    max_position_embeddings; every layer of Mistral, Mixtral and Qwen3-MoE, else config.json's layer_types,
    else Qwen2-MoE's layers l with l + 1 odd below max_window_layers, Qwen2 / Qwen3 layers from
    max_window_layers on. (0, set()) when none."""
    mt = cfg.get("model_type")
    if mt not in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mistral", "mixtral"):
        return 0, set()
    every = mt in ("mistral", "mixtral", "qwen3_moe")
    sw = cfg.get("sliding_window")
    use = cfg.get("use_sliding_window", mt in ("mistral", "mixtral"))
    if not use or not isinstance(sw, int) or sw <= 0 or sw >= cfg.get("max_position_embeddings", 4096):
        return 0, set()
    n, below = cfg["num_hidden_layers"], cfg.get("max_window_layers", 28)
    if every:
        layers = set(range(n))
    elif isinstance(cfg.get("layer_types"), list):
        layers = {i for i, t in enumerate(cfg["layer_types"]) if t == "sliding_attention"}
    elif mt == "qwen2_moe":
        layers = {i for i in range(n) if (i + 1) % 2 and i < below}
    else:
        layers = {i for i in range(n) if i >= below}
    return (sw, layers) if layers else (0, set())


def make_forward(cfg, W, rnd=bf16, kv8=None):
    """The model's forward in float64 from its config and weights (load_safetensors' names): forward(ids, R)
    gives the last position's logits, rounded to rnd's 16-bit type at the points in R (main's doc);
    forward(ids, R, hidden=True) every position's final normalized hidden state (lm_head's operand). Qwen2,
    Llama and Qwen3 (q_norm / k_norm: each query and key head RMS-normalized before RoPE, as transformers'
    Qwen3Attention), and the mixtures of experts Qwen2-MoE (a shared expert), Qwen3-MoE and Mixtral (moe below); RoPE scaling linear, llama3 and yarn (its attention factor on the cosines and sines,
    as transformers'); sliding-window attention (sliding_window_layers: position i of such a layer sees
    keys j with i - window < j <= i). kv8: the rounding of the "kv8" point (e4m3 by default)."""
    kv8 = kv8 or e4m3
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    inv, mscale = inv_freq(cfg, D), attention_factor(cfg)
    window, sliding = sliding_window_layers(cfg)
    embed = W["model.embed_tokens.weight"]
    lm_head = embed if cfg.get("tie_word_embeddings") else W["lm_head.weight"]

    def expert(h, gate, up, down, R):
        g, u = h @ W[gate].T, h @ W[up].T
        a = g / (1 + np.exp(-g)) * u
        if "act" in R:
            a = rnd(a)
        return a @ W[down].T

    def moe(h, router, names, R):
        """A sparse MoE block as transformers' Qwen3MoeSparseMoeBlock / MixtralSparseMoeBlock: softmax of the
        router logits over all experts, the top k (ties to the lower index), renormalized where the config
        says (Mixtral always), the chosen experts' outputs weighted and summed in expert order."""
        logits = h @ W[router].T
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        k = cfg["num_experts_per_tok"]
        top = np.argsort(-pr, axis=-1, kind="stable")[:, :k]
        wt = np.take_along_axis(pr, top, -1)
        if cfg.get("norm_topk_prob", cfg.get("model_type") == "mixtral"):
            wt = wt / wt.sum(-1, keepdims=True)
        out = np.zeros_like(h)
        for e in range(pr.shape[1]):
            t, j = np.nonzero(top == e)
            if len(t):
                out[t] += wt[t, j][:, None] * expert(h[t], *names(e), R)
        return out

    def mlp_of(R):
        def mlp(h, p):
            if p + "mlp.gate.weight" in W:  # Qwen3-MoE, Qwen2-MoE
                out = moe(h, p + "mlp.gate.weight",
                          lambda e: [f"{p}mlp.experts.{e}.{n}_proj.weight" for n in ("gate", "up", "down")], R)
                if p + "mlp.shared_expert_gate.weight" in W:  # Qwen2-MoE: + sigmoid(h . gate) * the shared expert
                    s = p + "mlp.shared_expert."
                    gate = h @ W[p + "mlp.shared_expert_gate.weight"].T
                    out = out + 1 / (1 + np.exp(-gate)) * expert(h, s + "gate_proj.weight", s + "up_proj.weight",
                                                                 s + "down_proj.weight", R)
                return out
            if p + "block_sparse_moe.gate.weight" in W:  # Mixtral (w1 gate, w3 up, w2 down)
                return moe(h, p + "block_sparse_moe.gate.weight",
                           lambda e: [f"{p}block_sparse_moe.experts.{e}.{n}.weight" for n in ("w1", "w3", "w2")], R)
            return expert(h, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight", R)
        return mlp

    def forward(ids, R, hidden=False):
        mlp = mlp_of(R)
        T = len(ids)
        x = embed[ids]
        ang = np.arange(T)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None] * mscale, np.sin(ang)[:, None] * mscale

        def rope(t):
            a, b = t[..., :D // 2], t[..., D // 2:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

        def norm(x, w, point):
            y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
            return rnd(y) if point in R else y

        def proj(h, name):
            y = h @ W[name + ".weight"].T
            return y + W[name + ".bias"] if name + ".bias" in W else y

        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = norm(x, W[p + "input_layernorm.weight"], "h")
            q = proj(h, p + "self_attn.q_proj").reshape(T, nh, D)
            k = proj(h, p + "self_attn.k_proj").reshape(T, nkv, D)
            if p + "self_attn.q_norm.weight" in W:
                q = norm(q, W[p + "self_attn.q_norm.weight"], "qk")
                k = norm(k, W[p + "self_attn.k_norm.weight"], "qk")
            q, k = rope(q), rope(k)
            v = proj(h, p + "self_attn.v_proj").reshape(T, nkv, D)
            if "kv" in R:
                k, v = rnd(k), rnd(v)
            if "kv8" in R:
                k, v = kv8(k), kv8(v)
            o = np.zeros((T, nh, D))
            mask = np.triu(np.full((T, T), -np.inf), 1)
            if layer in sliding:
                mask += np.tril(np.full((T, T), -np.inf), -window)
            for hh in range(nh):
                kh = hh // (nh // nkv)
                s = q[:, hh] @ k[:, kh].T / np.sqrt(D) + mask
                pm = np.exp(s - s.max(-1, keepdims=True))
                o[:, hh] = (pm / pm.sum(-1, keepdims=True)) @ v[:, kh]
            o = o.reshape(T, nh * D)
            if "attn" in R:
                o = rnd(o)
            x = x + o @ W[p + "self_attn.o_proj.weight"].T
            h = norm(x, W[p + "post_attention_layernorm.weight"], "h")
            x = x + mlp(h, p)
        if hidden:
            return norm(x, W["model.norm.weight"], "final")
        return (norm(x[-1:], W["model.norm.weight"], "final") @ lm_head.T)[0]
    return forward


def main():
    fixtures, model = sys.argv[1], sys.argv[2]
    mdir = f"{fixtures}/models/{model}"
    cfg = json.load(open(f"{mdir}/config.json"))
    W = load_checkpoint(mdir)
    golden = json.load(open(f"{fixtures}/golden/{model}.json"))
    prompts = golden["public"]
    gold = np.fromfile(f"{fixtures}/golden/{model}.last_logits.f32", dtype="<f4").reshape(len(prompts), -1)

    if "--fp8" in sys.argv[3:]:
        args = sys.argv[3:]
        tp = int(args[args.index("--tp") + 1]) if "--tp" in args else 1
        for name in list(W):
            if not name.startswith("model.layers.") or not name.endswith("_proj.weight"):
                continue
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # split by columns across the group
                W[name] = np.concatenate([fp8_rows(c) for c in np.split(W[name], tp, axis=1)], axis=1)
            else:
                W[name] = fp8_rows(W[name])

    rnd = f16 if "--half" in sys.argv[3:] else bf16  # (the 16-bit type of the rounding points)
    forward = make_forward(cfg, W, rnd)

    def errors(R):
        return np.array([np.linalg.norm(forward(pr["ids"], R) - gold[i]) / np.linalg.norm(gold[i])
                         for i, pr in enumerate(prompts)])

    if "--points" in sys.argv[3:]:
        i = sys.argv.index("--points")
        R = set(sys.argv[i + 1].split(",")) - {"none"}  # (none: float64 throughout)
        unknown = R - {"h", "kv", "attn", "act", "final", "kv8"}
        if unknown:
            raise SystemExit(f"--points: unknown rounding points {sorted(unknown)}")
        np.array([forward(pr["ids"], R) for pr in prompts], dtype="<f4").tofile(sys.argv[i + 2])
        return
    if "--fp8" in sys.argv[3:] or "--fp8-kv" in sys.argv[3:]:
        kv8 = "--fp8-kv" in sys.argv[3:]
        out = sys.argv[sys.argv.index("--fp8-kv" if kv8 else "--fp8") + 1]
        np.array([forward(pr["ids"], {"kv8"} if kv8 else set()) for pr in prompts], dtype="<f4").tofile(out)
        return
    if "--kv8-sensitivity" in sys.argv[3:]:
        ref = [forward(pr["ids"], {"kv8"}) for pr in prompts]
        print(f"{model}: E4M3-cache logits, worst relative L2 over {len(prompts)} prompts after keys and values "
              "are perturbed by a relative a before E4M3 (3 seeds)")
        for a in (3e-7, 1e-6, 3e-6):
            worst = []
            for seed in range(3):
                rng = np.random.default_rng(seed)
                f = make_forward(cfg, W, rnd, lambda x: e4m3(x * (1 + a * rng.standard_normal(np.shape(x)))))
                worst.append(max(np.linalg.norm(f(pr["ids"], {"kv8"}) - r) / np.linalg.norm(r)
                                 for pr, r in zip(prompts, ref)))
            print(f"  a = {a:.0e}: " + ", ".join(f"{w:.2e}" for w in worst))
        return
    if "--check" in sys.argv[3:]:
        e = errors(set())
        print(f"{model}: float64 forward against the goldens, worst relative L2 {e.max():.3e}")
        sys.exit(0 if e.max() < 1e-5 else 1)
    points = ["h", "kv", "attn", "act", "final"]
    rows = [("none (float64 throughout)", set()), ("all (llmserve's bf16 path)", set(points))]
    rows += [(f"only {p}", {p}) for p in points] + [(f"all but {p}", set(points) - {p}) for p in points]
    print(f"{model}: worst last-logits relative L2 over {len(prompts)} prompts, bf16 rounding at")
    for name, R in rows:
        e = errors(R)
        print(f"  {name:28s} {e.max():.3e}   ({(e < 1e-2).sum()} of {len(e)} within 1e-2)")


if __name__ == "__main__":
    main()
