#include "model/transformer.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "common/error.h"
#include "model/weight_names.h"

namespace llmserve {

ShardInfo make_shard_info(const ModelSpec& s, const Topology& topo) {
  model_spec_check_layout(s, topo.tp, topo.pp);
  ShardInfo sh;
  const int r = topo.tp_rank(), tp = topo.tp;
  sh.q_heads = s.num_heads / tp;
  if (s.num_kv_heads % tp == 0) {
    sh.kv_heads = s.num_kv_heads / tp;
    sh.kv_head_begin = sh.kv_heads * r;
  } else {  // tp is a multiple of the kv heads: replicate
    sh.kv_heads = 1;
    sh.kv_head_begin = (static_cast<int64_t>(r) * sh.q_heads) / (s.num_heads / s.num_kv_heads);
  }
  sh.intermediate = s.intermediate_size / tp;
  sh.moe_intermediate = s.moe_intermediate_size / tp;
  sh.shared_intermediate = s.shared_expert_intermediate_size / tp;
  sh.vocab = shard_range(s.vocab_size, tp, r);
  sh.vocab_padded = (s.vocab_size + tp - 1) / tp;
  sh.layers = stage_layers(s.num_layers, topo.pp, topo.stage());
  return sh;
}

namespace {

// Bytes of layer `l`'s matrices in the order the constructor loads them: q/k/v, o_proj, gate/up, down, held
// as `dt` (F8E4M3: a code per weight and a float32 scale per row). A mixture of experts' gate/up is the router
// and every expert's gate/up (and a shared expert's gate/up and gate), its down every expert's down (and the
// shared expert's).
std::array<double, 4> layer_matrix_bytes(const ModelSpec& s, const ShardInfo& sh, DType dt, int l) {
  const double e = static_cast<double>(dtype_size(dt)), H = static_cast<double>(s.hidden_size);
  const double qn = static_cast<double>(sh.q_heads * s.head_dim), kn = static_cast<double>(sh.kv_heads * s.head_dim);
  const double per_row = dt == DType::F8E4M3 ? 4.0 : 0.0;
  auto bytes = [&](double rows, double cols) { return e * rows * cols + per_row * rows; };
  if (moe_layer(s, l)) {
    const double E = s.num_experts, m = static_cast<double>(sh.moe_intermediate);
    const double si = static_cast<double>(sh.shared_intermediate), shared_in = si > 0 ? bytes(2 * si, H) + bytes(1, H) : 0.0;
    return {bytes(qn + 2 * kn, H), bytes(H, qn), bytes(E, H) + E * bytes(2 * m, H) + shared_in,
            E * bytes(H, m) + (si > 0 ? bytes(H, si) : 0.0)};
  }
  const double in = static_cast<double>(sh.intermediate);
  return {bytes(qn + 2 * kn, H), bytes(H, qn), bytes(2 * in, H), bytes(H, in)};
}

// vLLM's offload rule: a matrix goes to host memory while fewer than `budget` bytes have gone.
struct OffloadBudget {
  double budget, used = 0;
  bool take(double bytes) {
    if (used >= budget) return false;
    used += bytes;
    return true;
  }
};

}  // namespace

double shard_weight_bytes(const ModelSpec& s, const ShardInfo& sh, bool first_stage, bool last_stage, DType dt,
                          DType matrix_dt) {
  const double e = static_cast<double>(dtype_size(dt)), H = static_cast<double>(s.hidden_size);
  const double qn = static_cast<double>(sh.q_heads * s.head_dim), kn = static_cast<double>(sh.kv_heads * s.head_dim);
  // Two norms (four with qk_norm) and the matrices: as the constructor loads them.
  double bytes = 0;
  for (int l = sh.layers.begin; l < sh.layers.end; ++l) {
    double layer = e * 2 * H + (s.qk_norm ? e * 2 * static_cast<double>(s.head_dim) : 0.0);
    for (double m : layer_matrix_bytes(s, sh, matrix_dt, l)) layer += m;
    if (s.attention_bias) layer += 4.0 * (qn + 2 * kn);
    bytes += layer;
  }
  const double table = e * static_cast<double>(sh.vocab_padded) * H;
  if (first_stage || (last_stage && s.tie_word_embeddings)) bytes += table;
  if (last_stage) bytes += e * H + (s.tie_word_embeddings ? 0.0 : table);
  return bytes;
}

double offloaded_weight_bytes(const ModelSpec& s, const ShardInfo& sh, DType dt, double budget, double* largest) {
  OffloadBudget b{budget};
  double most = 0;
  for (int l = sh.layers.begin; l < sh.layers.end && b.used < budget; ++l)
    for (double bytes : layer_matrix_bytes(s, sh, dt, l))
      if (b.take(bytes)) most = std::max(most, bytes);
  if (largest) *largest = most;
  return b.used;
}

double largest_matrix_bytes(const ModelSpec& s, const ShardInfo& sh, DType dt) {
  double most = 0;
  for (int l = sh.layers.begin; l < sh.layers.end; ++l)
    for (double bytes : layer_matrix_bytes(s, sh, dt, l)) most = std::max(most, bytes);
  return most;
}

void check_moe_options(const ModelSpec& s, bool fp8, bool offload, bool lora) {
  if (s.num_experts == 0) return;
  const char* what = fp8 ? "quantization fp8" : offload ? "cpu_offload_gb" : lora ? "LoRA adapters (enable_lora)" : nullptr;
  if (what)
    throw Error(cat(what, ": not supported with a mixture-of-experts model (", s.architecture, ") in llmserve yet"));
}

Transformer::Transformer(const ModelSpec& spec, const Topology& topo, Backend& backend, Comm& tp_comm,
                         const WeightSource& file, double offload_budget, bool fp8)
    : spec_(spec), topo_(topo), be_(backend), tp_comm_(tp_comm), shard_(make_shard_info(spec, topo)) {
  const DType dt = be_.compute_dtype();
  check_moe_options(spec, fp8, offload_budget > 0, false);
  OffloadBudget offload{offload_budget};
  std::array<double, 4> matrix_bytes{};  // (the layer being loaded's)
  // The backend tensor of a layer's matrix `m` (index into matrix_bytes): in host memory while the
  // offload budget lasts; FP8 codes with `fp8`.
  auto put_matrix = [&](int m, const float* v, const std::vector<int64_t>& shape) {
    const bool host = offload.take(matrix_bytes[static_cast<size_t>(m)]);
    if (fp8) return be_.upload_fp8(v, shape, dt, host);
    return host ? be_.upload_to_host_memory(v, shape, dt) : be_.upload(v, shape, dt);
  };
  const int64_t H = spec.hidden_size, D = spec.head_dim;
  const int r = topo.tp_rank();
  auto load_rows = [&](const std::string& name, int64_t r0, int64_t nr, int64_t cols) {
    auto v = file.read_f32(name, r0, nr, 0, cols);
    return be_.upload(v.data(), cols > 1 ? std::vector<int64_t>{nr, cols} : std::vector<int64_t>{nr}, dt);
  };
  // A matrix's column range (o_proj and down: split by input columns), `m` as put_matrix takes it.
  auto load_cols = [&](int m, const std::string& name, int64_t rows, int64_t c0, int64_t nc) {
    auto v = file.read_f32(name, 0, rows, c0, nc);
    return put_matrix(m, v.data(), {rows, nc});
  };
  auto load_vec = [&](const std::string& name, int64_t n) { return load_rows(name, 0, n, 1); };
  // Row ranges (name, first row, rows) of tensors with `cols` columns as one [rows, cols] tensor of
  // `type` (cols 1: a vector), returned as a view of each range: q/k/v and gate/up are stacked, so a
  // backend may run each group as one GEMM (stacked_rows). `m` >= 0: a layer's matrix (put_matrix).
  struct Part {
    std::string name;
    int64_t r0, n;
  };
  auto load_stacked = [&](const std::vector<Part>& parts, int64_t cols, DType type, int m = -1) {
    std::vector<float> all;
    int64_t rows = 0;
    for (const Part& p : parts) {
      const auto v = file.read_f32(p.name, p.r0, p.n, 0, cols);
      all.insert(all.end(), v.begin(), v.end());
      rows += p.n;
    }
    const std::vector<int64_t> shape = cols > 1 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
    const Tensor t = m >= 0 ? put_matrix(m, all.data(), shape) : be_.upload(all.data(), shape, type);
    std::vector<Tensor> views;
    int64_t at = 0;
    for (const Part& p : parts) {
      views.push_back(rows_view(t, at, p.n));
      at += p.n;
    }
    return views;
  };
  // Vocabulary-parallel tables are padded to vocab_padded rows so all ranks gather equal blocks.
  auto load_vocab = [&](const std::string& name) {
    auto v = file.read_f32(name, shard_.vocab.begin, shard_.vocab.size(), 0, H);
    v.resize(static_cast<size_t>(shard_.vocab_padded * H), 0.f);
    return be_.upload(v.data(), {shard_.vocab_padded, H}, dt);
  };
  // Check every tensor's full shape first, so a mismatched file says so instead of reading garbage.
  for (const auto& w : expected_weights(spec)) {
    if (!file.has_weight(w.name)) throw Error(cat("model file '", file.path(), "': tensor '", w.name, "' missing"));
    if (file.weight_shape(w.name) != w.shape)
      throw Error(cat("model file '", file.path(), "': tensor '", w.name, "' has the wrong shape"));
  }

  if (topo.first_stage() || (topo.last_stage() && spec.tie_word_embeddings))
    embed_ = load_vocab("model.embed_tokens.weight");
  if (topo.last_stage()) {
    final_norm_ = load_vec("model.norm.weight", H);
    lm_head_ = spec.tie_word_embeddings ? embed_ : load_vocab("lm_head.weight");
  }
  const auto inv = rope_inv_freq(spec);
  inv_freq_ = be_.upload(inv.data(), {static_cast<int64_t>(inv.size())}, DType::F32);

  const int64_t q0 = r * shard_.q_heads * D, qn = shard_.q_heads * D;
  const int64_t k0 = shard_.kv_head_begin * D, kn = shard_.kv_heads * D;
  const int64_t i0 = r * shard_.intermediate, in = shard_.intermediate;
  const int64_t m0 = r * shard_.moe_intermediate, mn = shard_.moe_intermediate;
  for (int l = shard_.layers.begin; l < shard_.layers.end; ++l) {
    const std::string p = layer_prefix(l);
    matrix_bytes = layer_matrix_bytes(spec, shard_, fp8 ? be_.fp8_matrix_dtype() : dt, l);
    LayerWeights w;
    w.input_norm = load_vec(p + "input_layernorm.weight", H);
    w.post_norm = load_vec(p + "post_attention_layernorm.weight", H);
    const std::string a = p + "self_attn.";
    auto qkv = load_stacked({{a + "q_proj.weight", q0, qn}, {a + "k_proj.weight", k0, kn}, {a + "v_proj.weight", k0, kn}}, H, dt, 0);
    w.wq = qkv[0], w.wk = qkv[1], w.wv = qkv[2];
    if (spec.attention_bias) {  // added in the GEMM epilogue to float32 outputs: kept in float32
      auto b = load_stacked({{a + "q_proj.bias", q0, qn}, {a + "k_proj.bias", k0, kn}, {a + "v_proj.bias", k0, kn}}, 1, DType::F32);
      w.bq = b[0], w.bk = b[1], w.bv = b[2];
    }
    if (spec.qk_norm) {  // (one head's weights: every rank holds them)
      w.q_norm = load_vec(a + "q_norm.weight", D);
      w.k_norm = load_vec(a + "k_norm.weight", D);
    }
    w.wo = load_cols(1, p + "self_attn.o_proj.weight", H, q0, qn);
    if (moe_layer(spec, l)) {  // (no offload or fp8 here: check_moe_options)
      w.router = load_rows(p + "mlp.gate.weight", 0, spec.num_experts, H);
      std::vector<float> gu, down;
      gu.reserve(static_cast<size_t>(spec.num_experts * 2 * mn * H));
      down.reserve(static_cast<size_t>(spec.num_experts * H * mn));
      for (int64_t e = 0; e < spec.num_experts; ++e) {
        const std::string x = expert_prefix(l, e);
        for (const char* part : {"gate_proj.weight", "up_proj.weight"}) {
          const auto v = file.read_f32(x + part, m0, mn, 0, H);
          gu.insert(gu.end(), v.begin(), v.end());
        }
        const auto v = file.read_f32(x + "down_proj.weight", 0, H, m0, mn);
        down.insert(down.end(), v.begin(), v.end());
      }
      w.experts_gate_up = be_.upload(gu.data(), {spec.num_experts * 2 * mn, H}, dt);
      w.experts_down = be_.upload(down.data(), {spec.num_experts * H, mn}, dt);
      if (const int64_t sn = shard_.shared_intermediate; sn > 0) {  // Qwen2-MoE's shared expert, split as a dense MLP
        const std::string se = p + "mlp.shared_expert.";
        auto gate_up = load_stacked({{se + "gate_proj.weight", r * sn, sn}, {se + "up_proj.weight", r * sn, sn}}, H, dt);
        w.w_gate = gate_up[0], w.w_up = gate_up[1];
        const auto v = file.read_f32(se + "down_proj.weight", 0, H, r * sn, sn);
        w.w_down = be_.upload(v.data(), {H, sn}, dt);
        w.shared_gate = load_rows(p + "mlp.shared_expert_gate.weight", 0, 1, H);
      }
      layers_.push_back(std::move(w));
      continue;
    }
    auto gate_up = load_stacked({{p + "mlp.gate_proj.weight", i0, in}, {p + "mlp.up_proj.weight", i0, in}}, H, dt, 2);
    w.w_gate = gate_up[0], w.w_up = gate_up[1];
    w.w_down = load_cols(3, p + "mlp.down_proj.weight", H, i0, in);
    layers_.push_back(std::move(w));
    if (offload.used > offloaded_bytes_) ++offloaded_layers_;
    offloaded_bytes_ = offload.used;
  }
}

namespace {

// The projections of each group (LoraGroup::which), in their places.
const std::vector<int> kLoraGroupTargets[kLoraGroups] = {{kLoraQ, kLoraK, kLoraV}, {kLoraO}, {kLoraGate, kLoraUp}, {kLoraDown}};

}  // namespace

void Transformer::set_loras(const std::vector<LoraAdapter>& adapters) {
  std::array<bool, kLoraTargets> targets{};
  int rank = 0;
  for (const LoraAdapter& ad : adapters) {
    rank = std::max(rank, ad.rank);
    for (const auto& layer : ad.layers)
      for (int t = 0; t < kLoraTargets; ++t) targets[static_cast<size_t>(t)] |= !layer[static_cast<size_t>(t)].a.empty();
  }
  reserve_loras(static_cast<int>(adapters.size()), rank, targets);
  for (size_t i = 0; i < adapters.size(); ++i) put_lora(static_cast<int>(i) + 1, adapters[i]);
}

void Transformer::reserve_loras(int slots, int rank, const std::array<bool, kLoraTargets>& targets) {
  if (slots > 0) check_moe_options(spec_, false, false, true);
  lora_.clear();
  lora_slots_ = slots;
  lora_rank_ = rank;
  lora_width_ = 0;
  lora_targets_ = targets;
  if (slots == 0) return;
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, S = slots, R = rank;
  // Each target's [in, out] as this rank holds it: column-parallel projections (q/k/v, gate/up) their
  // output rows cut, row-parallel ones (o, down) their input columns.
  const int64_t shape[kLoraTargets][2] = {{H, shard_.q_heads * D},   {H, shard_.kv_heads * D}, {H, shard_.kv_heads * D},
                                          {shard_.q_heads * D, H},   {H, shard_.intermediate}, {H, shard_.intermediate},
                                          {shard_.intermediate, H}};
  const DType dt = be_.compute_dtype();
  for (int l = shard_.layers.begin; l < shard_.layers.end; ++l) {
    LoraLayer mine;
    for (int g = 0; g < kLoraGroups; ++g) {
      LoraGroup& grp = mine[static_cast<size_t>(g)];
      const std::vector<int>& members = kLoraGroupTargets[g];
      for (size_t j = 0; j < members.size(); ++j) {
        const int target = members[j];
        if (!targets[static_cast<size_t>(target)]) continue;
        const int64_t N = shape[target][1];
        const std::vector<float> zeros(static_cast<size_t>(S * R * N), 0.f);
        grp.bt[static_cast<size_t>(grp.n)] = be_.upload(zeros.data(), {S, R, N}, dt);
        grp.which[static_cast<size_t>(grp.n)] = static_cast<int>(j);
        ++grp.n;
      }
      if (grp.n == 0) continue;
      const int64_t K = shape[members[0]][0], n = grp.n;
      const std::vector<float> zeros(static_cast<size_t>(S * n * R * K), 0.f);
      grp.a = be_.upload(zeros.data(), {S, n * R, K}, dt);
      lora_width_ = std::max(lora_width_, n * R);
    }
    lora_.push_back(std::move(mine));
  }
}

void Transformer::put_lora(int slot, const LoraAdapter& ad) {
  LLMSERVE_CHECK(slot >= 1 && slot <= lora_slots_, "put_lora: no LoRA slot ", slot);
  const std::string who = cat("LoRA adapter '", ad.name, "'");
  if (ad.rank > lora_rank_) throw Error(cat(who, ": rank ", ad.rank, " is greater than the ", lora_rank_, " reserved"));
  if (static_cast<int>(ad.layers.size()) != spec_.num_layers)
    throw Error(cat(who, ": ", ad.layers.size(), " layers for a model of ", spec_.num_layers));
  for (const auto& layer : ad.layers)
    for (int t = 0; t < kLoraTargets; ++t)
      if (!layer[static_cast<size_t>(t)].a.empty() && !lora_targets_[static_cast<size_t>(t)])
        throw Error(cat(who, " updates a projection (", lora_target_name(static_cast<LoraTarget>(t)),
                        ") the server's LoRA stacks do not hold"));
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, R = lora_rank_, s = slot - 1, r = ad.rank;
  const int tr = topo_.tp_rank();
  const int64_t q0 = tr * shard_.q_heads * D, qn = shard_.q_heads * D;
  const int64_t k0 = shard_.kv_head_begin * D, kn = shard_.kv_heads * D;
  const int64_t i0 = tr * shard_.intermediate, in = shard_.intermediate;
  // Column-parallel projections (q/k/v, gate/up): B's rows [first, first + n) of the full matrix, A whole
  // (width H); row-parallel ones (o, down): A's columns [first, first + n) of `width`, B whole (n = H).
  struct Cut {
    bool rows;
    int64_t first, n, width;
  };
  const Cut cuts[kLoraTargets] = {{true, q0, qn, H},  {true, k0, kn, H},  {true, k0, kn, H}, {false, q0, qn, spec_.num_heads * D},
                                  {true, i0, in, H}, {true, i0, in, H}, {false, i0, in, spec_.intermediate_size}};
  // rows [first, first + n) of `stack` [S, rows, cols] seen as [S * rows, cols]
  auto slot_rows = [&](const Tensor& stack) {
    Tensor v = stack;
    v.shape = {stack.dim(0) * stack.dim(1), stack.dim(2)};
    return rows_view(v, s * stack.dim(1), stack.dim(1));
  };
  const DType dt = be_.compute_dtype();
  for (int l = shard_.layers.begin; l < shard_.layers.end; ++l) {
    const LoraLayer& mine = lora_[static_cast<size_t>(l - shard_.layers.begin)];
    for (int g = 0; g < kLoraGroups; ++g) {
      const LoraGroup& grp = mine[static_cast<size_t>(g)];
      if (grp.n == 0) continue;
      const int64_t K = grp.a.dim(2), n = grp.n;
      std::vector<float> a(static_cast<size_t>(n * R * K), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const int target = kLoraGroupTargets[g][static_cast<size_t>(grp.which[static_cast<size_t>(j)])];
        const Cut& c = cuts[target];
        const Tensor& bt_stack = grp.bt[static_cast<size_t>(j)];
        const int64_t N = bt_stack.dim(2);
        std::vector<float> bt(static_cast<size_t>(R * N), 0.f);
        const LoraMatrices& m = ad.layers.at(static_cast<size_t>(l))[static_cast<size_t>(target)];
        if (!m.a.empty()) {
          const int64_t b0 = c.rows ? c.first : 0;  // (B's first row held)
          for (int64_t i = 0; i < r; ++i) {
            std::copy_n(m.a.begin() + i * c.width + (c.rows ? 0 : c.first), K, a.data() + (j * R + i) * K);
            for (int64_t o = 0; o < N; ++o) bt[static_cast<size_t>(i * N + o)] = m.b[static_cast<size_t>((b0 + o) * r + i)];
          }
        }
        Tensor dst = slot_rows(bt_stack);
        be_.copy(be_.upload(bt.data(), {R, N}, dt), dst);
      }
      Tensor dst = slot_rows(grp.a);
      be_.copy(be_.upload(a.data(), {n * R, K}, dt), dst);
    }
  }
}

void Transformer::all_reduce(Tensor& t) {
  if (topo_.tp > 1) tp_comm_.all_reduce_sum(t.as<float>(), static_cast<size_t>(t.numel()));
}

Tensor Transformer::logits(const Tensor& normed) {
  // Logits leave the GEMM in float32 (bf16 would round values near 16 to steps of 1/16).
  Tensor l = be_.empty({normed.dim(0), shard_.vocab_padded}, DType::F32);
  be_.linear(normed, lm_head_, nullptr, l);
  return l;
}

Tensor Transformer::forward(const StepMeta& m, const Tensor& hidden_in, KvCache& kv, Tensor* out, Tensor* prompt_hidden) {
  if (!topo_.last_stage()) return body(m, hidden_in, kv, out);  // the residual stream is this stage's result
  return head(m, body(m, hidden_in, kv), out, prompt_hidden);
}

Tensor Transformer::body(const StepMeta& m, const Tensor& hidden_in, KvCache& kv, Tensor* x_out) {
  const int64_t T = m.num_tokens(), H = spec_.hidden_size, D = spec_.head_dim;
  const DType dt = be_.compute_dtype();
  const float eps = static_cast<float>(spec_.rms_norm_eps);
  // (yarn: RoPE's attention factor on both the queries and the keys, so squared on the scores)
  const double rope_factor = rope_attention_factor(spec_);
  const float scale = static_cast<float>(rope_factor * rope_factor) / std::sqrt(static_cast<float>(D));
  be_.begin_step(m);

  // The residual stream stays in float32 whatever the activation type: rounding it to bf16 at every
  // residual add is the largest error of a bf16 forward.
  Tensor x;
  if (x_out) LLMSERVE_CHECK(x_out->dtype == DType::F32 && x_out->dim(0) >= T, "forward: output tensor too small");
  if (topo_.first_stage()) {
    x = x_out ? rows_view(*x_out, 0, T) : be_.empty({T, H}, DType::F32);
    be_.embedding(embed_, shard_.vocab.begin, x);
    all_reduce(x);
  } else if (x_out) {
    x = rows_view(*x_out, 0, T);
    be_.copy(hidden_in, x);
  } else {
    x = hidden_in;
  }
  // GEMM operands are in the activation type; GEMM outputs stay float32 until the next GEMM (RoPE,
  // SiLU and the residual adds run in float32; values are rounded once, into the KV cache or a GEMM
  // input).
  constexpr DType f32 = DType::F32;
  Tensor h = be_.empty({T, H}, dt), proj = be_.empty({T, H}, f32);
  Tensor q = be_.empty({T, shard_.q_heads * D}, f32), attn = be_.empty({T, shard_.q_heads * D}, dt);
  Tensor k = be_.empty({T, shard_.kv_heads * D}, f32), v = be_.empty({T, shard_.kv_heads * D}, f32);
  Tensor gate_up = be_.empty({T, 2 * shard_.intermediate}, f32);
  Tensor act = be_.empty({T, shard_.intermediate}, dt);
  // Qwen2-MoE's shared expert: its gate/up, activation and output.
  const int64_t si = shard_.shared_intermediate;
  Tensor shared_gu, shared_act, shared_y;
  if (si > 0) shared_gu = be_.empty({T, 2 * si}, f32), shared_act = be_.empty({T, si}, dt), shared_y = be_.empty({T, H}, f32);
  // LoRA (set_loras): each group's update added to its projections' outputs, for the rows of the step's
  // adapters.
  LLMSERVE_CHECK(std::all_of(m.lora.begin(), m.lora.end(), [&](int32_t s) { return s >= 0 && s <= lora_slots_; }),
                 "forward: a step names a LoRA adapter this rank has not loaded");
  const bool lora_step = lora_slots_ > 0 && !m.lora.empty();
  Tensor lora_t;
  if (lora_step) lora_t = be_.empty({T, lora_width_}, f32);
  // Group g's delta for the op that computes its projections (the op shrinks its input and adds the
  // expand); null when the step has no adapter or none touches the group. (Each group's shrink output
  // overwrites the last's: ops run in order.)
  std::array<Tensor, kLoraGroups> lora_out;
  std::array<Backend::LoraDelta, kLoraGroups> lora_delta;
  auto lora = [&](size_t li, int g) -> const Backend::LoraDelta* {
    if (!lora_step) return nullptr;
    const LoraGroup& grp = lora_[li][static_cast<size_t>(g)];
    if (grp.n == 0) return nullptr;
    Tensor& t = lora_out[static_cast<size_t>(g)];
    t = lora_t;
    t.shape = {T, grp.a.dim(1)};
    Backend::LoraDelta& d = lora_delta[static_cast<size_t>(g)];
    d = {};
    d.a = &grp.a;
    d.t = &t;
    const int64_t R = grp.a.dim(1) / grp.n;
    for (int j = 0; j < grp.n; ++j) {
      const size_t at = static_cast<size_t>(grp.which[static_cast<size_t>(j)]);
      d.bt[at] = &grp.bt[static_cast<size_t>(j)];
      d.col[at] = j * R;
    }
    return &d;
  };
  // Each block's input norm runs inside the block's first op. The output projections add into the
  // residual stream themselves on one rank; a tensor group sums its partial projections first (a
  // row-parallel projection's LoRA update, partial on each rank too, joins its sum).
  auto project_residual = [&](const Tensor& a, const Tensor& w, const Backend::LoraDelta* d) {
    if (topo_.tp == 1) return be_.linear_residual(a, w, proj, x, d);
    be_.linear(a, w, nullptr, proj);
    if (d) be_.lora_update(a, *d, {&proj, nullptr, nullptr});
    all_reduce(proj);
    be_.add(x, proj);
  };
  for (size_t li = 0; li < layers_.size(); ++li) {
    const LayerWeights& w = layers_[li];
    const bool bias = spec_.attention_bias;
    Tensor& kc = kv.k(static_cast<int>(li));
    Tensor& vc = kv.v(static_cast<int>(li));
    const Backend::HeadNorm head_norm{w.q_norm, w.k_norm, eps};  // (Qwen3: each query and key head normalized before RoPE)
    const Backend::InputNorm in_norm{w.input_norm, eps, h}, post_norm{w.post_norm, eps, h};
    be_.norm_qkv_rope_kv_write(x, in_norm, w.wq, bias ? &w.bq : nullptr, q, w.wk, bias ? &w.bk : nullptr, k, w.wv,
                               bias ? &w.bv : nullptr, v, spec_.qk_norm ? &head_norm : nullptr, inv_freq_, D, kc, vc,
                               lora(li, kLoraQkv));
    be_.attention(q, kc, vc, D, kv.shape().block_size, scale, attn,
                  attention_window(spec_, shard_.layers.begin + static_cast<int>(li)));
    project_residual(attn, w.wo, lora(li, kLoraOut));
    if (w.router.defined()) {  // a mixture of experts: each rank's share of every expert, summed as a dense MLP's
      be_.rmsnorm(x, w.post_norm, eps, h);
      const Backend::MoeWeights moe{w.router, w.experts_gate_up, w.experts_down, spec_.num_experts_per_tok, spec_.norm_topk_prob};
      Tensor& out = topo_.tp == 1 ? x : proj;  // (one rank: into the residual stream itself)
      be_.moe(h, moe, out, topo_.tp == 1);
      if (w.shared_gate.defined()) {  // + sigmoid(h . shared_expert_gate) * the shared expert's SwiGLU of h
        be_.gate_up_silu(h, w.w_gate, w.w_up, shared_gu, shared_act);
        be_.linear(shared_act, w.w_down, nullptr, shared_y);
        be_.add_sigmoid_gated(out, shared_y, h, w.shared_gate);
      }
      if (topo_.tp > 1) {
        all_reduce(proj);
        be_.add(x, proj);
      }
      continue;
    }
    be_.norm_gate_up_silu(x, post_norm, w.w_gate, w.w_up, gate_up, act, lora(li, kLoraGateUp));
    project_residual(act, w.w_down, lora(li, kLoraDownGroup));
  }
  return x;
}

Tensor Transformer::head(const StepMeta& m, const Tensor& x, Tensor* out, Tensor* prompt_hidden) {
  LLMSERVE_CHECK(topo_.last_stage(), "forward: the head runs on the last stage");
  const int64_t H = spec_.hidden_size;
  const DType dt = be_.compute_dtype();
  const float eps = static_cast<float>(spec_.rms_norm_eps);
  const int64_t all = static_cast<int64_t>(m.logits_indices.size()), P = m.prompt_rows, n = all - P;
  LLMSERVE_CHECK(P >= 0 && n >= 0 && (P == 0 || (prompt_hidden && !out)), "forward: bad prompt rows");
  if (out) LLMSERVE_CHECK(out->dtype == DType::F32 && out->dim(0) >= n, "forward: output tensor too small");
  if (all == 0) return out ? rows_view(*out, 0, 0) : be_.empty({0, shard_.vocab_padded}, dt);  // nothing samples
  Tensor sel = be_.empty({all, H}, DType::F32), normed = be_.empty({all, H}, dt);
  be_.gather_rows(x, sel);
  be_.rmsnorm(sel, final_norm_, eps, normed);
  if (P > 0) *prompt_hidden = rows_view(normed, n, P);
  if (out) {
    Tensor l = rows_view(*out, 0, n);
    be_.linear(rows_view(normed, 0, n), lm_head_, nullptr, l);
    return l;
  }
  return logits(P > 0 ? rows_view(normed, 0, n) : normed);
}

}  // namespace llmserve
