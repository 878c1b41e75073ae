// The model side of CUDA graphs for decode steps, on the CPU reference backend: the batch-size
// buckets, and a decode step padded to its bucket (pad_decode_step) computed into a preallocated
// output (Transformer::forward with `out`) gives the unpadded step's logits and KV-cache writes
// exactly, on one stage and on both stages of a two-stage pipeline.
#include <gtest/gtest.h>

#include <cstring>

#include <filesystem>
#include <random>

#include "backend/cpu_backend.h"
#include "convert/model_writer.h"
#include "engine/worker.h"
#include "kv/kv_cache.h"
#include "config/config.h"
#include "model/decode_graphs.h"
#include "model/graph_sizes.h"
#include "model/mixed_graphs.h"
#include "model/model_file.h"
#include "model/transformer.h"
#include "model/weight_names.h"
#include "test_util.h"

using namespace llmserve;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBlock = 4;

// A two-layer GQA model with random weights, written once.
const std::string& model_path() {
  static const std::string path = [] {
    const fs::path dir = llmserve::testing::temp_dir("decode-graphs");
    const std::string p = (dir / "m.h5").string();
    const ModelSpec s = llmserve::testing::small_spec(4, 2, 32, 2, 32, 8, 50);
    ModelWriter w(p, s, "test");
    std::mt19937 g(5);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    for (const auto& t : expected_weights(s)) {
      std::vector<float> v(t.shape.size() == 2 ? t.shape[0] * t.shape[1] : t.shape[0]);
      const bool norm = t.name.find("norm") != std::string::npos;
      for (auto& x : v) x = norm ? 1.f + u(g) : u(g);
      w.add_tensor(t.name, DType::F32, t.shape, v.data());
    }
    w.commit();
    return p;
  }();
  return path;
}

// Three sequences: a prefill of their prompts, then one decode step (positions 5, 9 and 3).
const std::vector<std::vector<int32_t>> kTables = {{0, 1}, {2, 3, 4}, {5}};
StepPlan prefill_plan() {
  StepPlan p;
  const std::vector<std::vector<int32_t>> prompts = {{3, 9, 4, 7, 1}, {11, 2, 8, 8, 30, 6, 5, 12, 40}, {44, 1, 19}};
  for (size_t s = 0; s < prompts.size(); ++s) {
    SeqStep q;
    q.seq_id = s;
    q.tokens = prompts[s];
    q.block_table = kTables[s];
    q.sample = true;
    p.seqs.push_back(q);
  }
  return p;
}
StepPlan decode_plan() {
  StepPlan p;
  const int32_t computed[] = {5, 9, 3}, next[] = {17, 23, 48};
  for (size_t s = 0; s < 3; ++s) {
    SeqStep q;
    q.seq_id = s;
    q.num_computed = computed[s];
    q.tokens = {next[s]};
    q.block_table = kTables[s];
    q.sample = true;
    p.seqs.push_back(q);
  }
  return p;
}

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  be.download(t, v.data());
  return v;
}

// The KV cache contents, every layer.
std::vector<float> kv_contents(Backend& be, KvCache& kv, int layers) {
  std::vector<float> all;
  for (int l = 0; l < layers; ++l)
    for (const Tensor* t : {&kv.k(l), &kv.v(l)}) {
      const auto v = host(be, *t);
      all.insert(all.end(), v.begin(), v.end());
    }
  return all;
}

// Values as their bits, to compare caches: the cache's unwritten slots hold whatever the allocation held
// before, NaN patterns among it, and NaN != NaN would make equal caches differ (and any two "differ").
std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// One pipeline stage (or the whole model) with its own KV cache, on backend `B`.
template <class B>
struct StageOn {
  StageOn(int rank, int pp)
      : file(model_path()),
        spec(file.spec()),
        topo(make_topology(rank, pp, 1, pp)),
        model(spec, topo, be, comm, file),
        kv(be, [&] {
          KvCacheShape s;
          s.num_layers = static_cast<int>(model.shard().layers.end - model.shard().layers.begin);
          s.num_blocks = 8;
          s.block_size = kBlock;
          s.kv_heads = model.shard().kv_heads;
          s.head_dim = spec.head_dim;
          return s;
        }()) {}
  int layers() const { return kv.shape().num_layers; }
  ModelFile file;
  ModelSpec spec;
  Topology topo;
  B be;
  llmserve::testing::SelfComm comm;
  Transformer model;
  KvCache kv;
};
using Stage = StageOn<CpuBackend>;

// Puts back KV-cache contents taken by kv_contents.
void restore(Stage& st, const std::vector<float>& kv) {
  for (int l = 0, i = 0; l < st.layers(); ++l)
    for (Tensor* t : {&st.kv.k(l), &st.kv.v(l)}) {
      st.be.copy_from_host(*t, 0, t->bytes(), kv.data() + i);
      i += static_cast<int>(t->numel());
    }
}

}  // namespace

TEST(DecodeGraphs, BucketSizes) {
  EXPECT_EQ(DecodeGraphs::bucket_sizes(1), (std::vector<int64_t>{1}));
  EXPECT_EQ(DecodeGraphs::bucket_sizes(4), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(DecodeGraphs::bucket_sizes(6), (std::vector<int64_t>{1, 2, 4, 6}));
  EXPECT_EQ(DecodeGraphs::bucket_sizes(32), (std::vector<int64_t>{1, 2, 4, 8, 16, 24, 32}));
  EXPECT_EQ(DecodeGraphs::bucket_sizes(256).size(), 35u);
}

TEST(DecodeGraphs, PaddedStepLayout) {
  const StepMeta real = step_meta_from_plan(decode_plan(), kBlock);
  const StepMeta m = pad_decode_step(real, 8, 6, 24);
  EXPECT_EQ(m.num_tokens(), 8);
  EXPECT_EQ(m.num_seqs(), 8);
  EXPECT_EQ(m.max_blocks, 6);
  EXPECT_EQ(m.max_context, 24);
  EXPECT_EQ(std::vector<int32_t>(m.slot_mapping.begin(), m.slot_mapping.begin() + 3), real.slot_mapping);
  for (int i = 3; i < 8; ++i) EXPECT_EQ(m.slot_mapping[i], -1) << "padding row " << i << " would write KV";
  // The block tables as the step has them (rows of the real width, read 6 apart), padding rows block 0.
  ASSERT_LT(real.max_blocks, 6);
  EXPECT_EQ(m.table_width, real.max_blocks);
  EXPECT_EQ(m.row_entries(), real.max_blocks);
  ASSERT_EQ(m.block_tables.size(), 8u * static_cast<size_t>(real.max_blocks));
  for (int s = 0; s < 8; ++s)
    for (int b = 0; b < real.max_blocks; ++b)
      EXPECT_EQ(m.block_tables[s * real.max_blocks + b], s < 3 ? real.block_tables[s * real.max_blocks + b] : 0);
  EXPECT_EQ(m.logits_indices, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_THROW(pad_decode_step(real, 2, 6, 24), Error);  // more sequences than the bucket
  EXPECT_THROW(pad_decode_step(real, 8, 2, 24), Error);  // longer block tables than recorded
}

// One stage: the padded step into a preallocated output equals the eager step, logits and KV.
TEST(DecodeGraphs, PaddedStepMatchesTheEagerStep) {
  Stage st(0, 1);
  const StepMeta pre = step_meta_from_plan(prefill_plan(), kBlock);
  { Tensor l = st.model.forward(pre, Tensor(), st.kv); }
  const std::vector<float> kv_before = kv_contents(st.be, st.kv, st.layers());
  const StepMeta real = step_meta_from_plan(decode_plan(), kBlock);
  const std::vector<float> eager = host(st.be, st.model.forward(real, Tensor(), st.kv));
  const std::vector<float> kv_eager = kv_contents(st.be, st.kv, st.layers());
  ASSERT_NE(bits(kv_eager), bits(kv_before));  // the decode step wrote its keys and values

  // Back to the cache before the decode step, then the padded step as a graph would run it.
  restore(st, kv_before);
  Tensor out = st.be.empty({8, st.model.shard().vocab_padded}, DType::F32);
  const Tensor got = st.model.forward(pad_decode_step(real, 8, 6, 24), Tensor(), st.kv, &out);
  EXPECT_EQ(got.data, out.data);  // a view of the preallocated output
  ASSERT_EQ(got.dim(0), 8);
  const std::vector<float> padded = host(st.be, got);
  EXPECT_EQ(std::vector<float>(padded.begin(), padded.begin() + static_cast<long>(eager.size())), eager);
  EXPECT_EQ(bits(kv_contents(st.be, st.kv, st.layers())), bits(kv_eager));  // padding rows wrote nothing
}

// Two stages: the first stage's residual stream lands in `out`; the second copies its input there.
TEST(DecodeGraphs, PaddedStepMatchesOnBothPipelineStages) {
  Stage s0(0, 2), s1(1, 2);
  const StepMeta pre = step_meta_from_plan(prefill_plan(), kBlock);
  const StepMeta real = step_meta_from_plan(decode_plan(), kBlock);
  const StepMeta pad = pad_decode_step(real, 4, 6, 24);
  const int64_t H = s0.spec.hidden_size;
  { Tensor l = s1.model.forward(pre, s0.model.forward(pre, Tensor(), s0.kv), s1.kv); }
  const Tensor h_eager = s0.model.forward(real, Tensor(), s0.kv);
  const std::vector<float> hidden = host(s0.be, h_eager);
  // The eager second stage on a copy of its cache, so both runs start from the same keys and values.
  const std::vector<float> kv1 = kv_contents(s1.be, s1.kv, s1.layers());
  const std::vector<float> eager = host(s1.be, s1.model.forward(real, h_eager, s1.kv));
  restore(s1, kv1);

  // Stage 0 again with padding (its cache already holds the decode token's KV; rewriting the same
  // values changes nothing), its residual stream into out0.
  Tensor out0 = s0.be.empty({4, H}, DType::F32);
  const Tensor h_pad = s0.model.forward(pad, Tensor(), s0.kv, &out0);
  EXPECT_EQ(h_pad.data, out0.data);
  const std::vector<float> hp = host(s0.be, h_pad);
  EXPECT_EQ(std::vector<float>(hp.begin(), hp.begin() + static_cast<long>(hidden.size())), hidden);

  // Stage 1 with padding: its input (real rows, then padding) is copied into out1's rows.
  Tensor in1 = s1.be.empty({4, H}, DType::F32);
  s1.be.copy(h_pad, in1);
  Tensor out1 = s1.be.empty({4, s1.model.shard().vocab_padded}, DType::F32);
  const std::vector<float> got = host(s1.be, s1.model.forward(pad, in1, s1.kv, &out1));
  EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + static_cast<long>(eager.size())), eager);
}

// Mixed-step graphs (model/mixed_graphs.h): a step that is not a decode step (a prompt beside a
// running decode) padded to its token bucket, its layers run into a preallocated residual stream
// (Transformer::body) and the head after them, gives the eager step's logits and KV-cache writes.
namespace {
// Sequence 0 decodes (position 5); sequence 3, new, brings a prompt of 4 tokens; sequence 1 decodes.
StepPlan mixed_plan() {
  StepPlan p;
  SeqStep a;
  a.seq_id = 0;
  a.num_computed = 5;
  a.tokens = {17};
  a.block_table = kTables[0];
  a.sample = true;
  SeqStep b;
  b.seq_id = 3;
  b.tokens = {21, 5, 33, 2};
  b.block_table = {6, 7};
  b.sample = true;
  SeqStep c;
  c.seq_id = 1;
  c.num_computed = 9;
  c.tokens = {23};
  c.block_table = kTables[1];
  c.sample = true;
  p.seqs = {a, b, c};
  return p;
}
}  // namespace

TEST(MixedGraphs, BucketSizes) {
  EXPECT_EQ(MixedGraphs::bucket_sizes(8), (std::vector<int64_t>{8}));
  EXPECT_EQ(MixedGraphs::bucket_sizes(40), (std::vector<int64_t>{16, 32, 40}));
  EXPECT_EQ(MixedGraphs::bucket_sizes(48), (std::vector<int64_t>{16, 32, 48}));
  const auto b = MixedGraphs::bucket_sizes(8192);
  EXPECT_EQ(b.size(), 16u);
  EXPECT_EQ(b.back(), MixedGraphs::kMaxTokens);
}

TEST(MixedGraphs, PaddedStepLayout) {
  const StepMeta real = step_meta_from_plan(mixed_plan(), kBlock);
  ASSERT_EQ(real.num_tokens(), 6);
  ASSERT_EQ(real.num_seqs(), 3);
  const StepMeta m = pad_mixed_step(real, 16, 6, 24);
  EXPECT_EQ(m.num_tokens(), 16);
  EXPECT_EQ(m.num_seqs(), 3 + 10);  // each padding token a sequence of its own
  EXPECT_EQ(std::vector<int32_t>(m.q_start.begin(), m.q_start.begin() + 4), real.q_start);
  for (int s = 3; s <= 13; ++s) EXPECT_EQ(m.q_start[s], s + 3);
  EXPECT_EQ(std::vector<int32_t>(m.token_ids.begin(), m.token_ids.begin() + 6), real.token_ids);
  EXPECT_EQ(std::vector<int32_t>(m.positions.begin(), m.positions.begin() + 6), real.positions);
  EXPECT_EQ(std::vector<int32_t>(m.slot_mapping.begin(), m.slot_mapping.begin() + 6), real.slot_mapping);
  for (int i = 6; i < 16; ++i) EXPECT_EQ(m.slot_mapping[i], -1) << "padding token " << i << " would write KV";
  EXPECT_EQ(m.max_blocks, 6);
  EXPECT_EQ(m.row_entries(), real.max_blocks);
  ASSERT_EQ(m.block_tables.size(), 13u * static_cast<size_t>(real.max_blocks));
  for (int s = 0; s < 13; ++s)
    for (int b = 0; b < real.max_blocks; ++b)
      EXPECT_EQ(m.block_tables[s * real.max_blocks + b], s < 3 ? real.block_tables[s * real.max_blocks + b] : 0);
  EXPECT_EQ(m.logits_indices, real.logits_indices);  // the head gathers the real rows only
  EXPECT_EQ(m.max_context, 24);
  EXPECT_EQ(m.max_new, 16);
  EXPECT_THROW(pad_mixed_step(real, 4, 6, 24), Error);  // more tokens than the bucket
  EXPECT_THROW(pad_mixed_step(real, 16, 1, 24), Error);  // longer block tables than recorded
}

TEST(MixedGraphs, PaddedStepMatchesTheEagerStep) {
  Stage st(0, 1);
  { Tensor l = st.model.forward(step_meta_from_plan(prefill_plan(), kBlock), Tensor(), st.kv); }
  const std::vector<float> kv_before = kv_contents(st.be, st.kv, st.layers());
  const StepMeta real = step_meta_from_plan(mixed_plan(), kBlock);
  const std::vector<float> eager = host(st.be, st.model.forward(real, Tensor(), st.kv));
  const std::vector<float> kv_eager = kv_contents(st.be, st.kv, st.layers());
  ASSERT_NE(bits(kv_eager), bits(kv_before));
  ASSERT_EQ(eager.size(), 3u * static_cast<size_t>(st.model.shard().vocab_padded));

  restore(st, kv_before);
  Tensor x = st.be.empty({16, st.spec.hidden_size}, DType::F32);
  const StepMeta pad = pad_mixed_step(real, 16, 6, 24);  // (the CPU backend keeps a pointer to the step's meta)
  const Tensor body = st.model.body(pad, Tensor(), st.kv, &x);
  EXPECT_EQ(body.data, x.data);  // a view of the preallocated residual stream
  ASSERT_EQ(body.dim(0), 16);
  EXPECT_EQ(host(st.be, st.model.head(real, rows_view(x, 0, real.num_tokens()))), eager);
  EXPECT_EQ(bits(kv_contents(st.be, st.kv, st.layers())), bits(kv_eager));  // padding tokens wrote nothing
}

TEST(MixedGraphs, PaddedStepMatchesOnBothPipelineStages) {
  Stage s0(0, 2), s1(1, 2);
  const StepMeta pre = step_meta_from_plan(prefill_plan(), kBlock);
  const StepMeta real = step_meta_from_plan(mixed_plan(), kBlock);
  const StepMeta pad = pad_mixed_step(real, 16, 6, 24);
  const int64_t H = s0.spec.hidden_size;
  { Tensor l = s1.model.forward(pre, s0.model.forward(pre, Tensor(), s0.kv), s1.kv); }
  const std::vector<float> kv0 = kv_contents(s0.be, s0.kv, s0.layers()), kv1 = kv_contents(s1.be, s1.kv, s1.layers());
  const Tensor h_eager = s0.model.forward(real, Tensor(), s0.kv);
  const std::vector<float> hidden = host(s0.be, h_eager);
  const std::vector<float> eager = host(s1.be, s1.model.forward(real, h_eager, s1.kv));
  restore(s0, kv0);
  restore(s1, kv1);

  Tensor x0 = s0.be.empty({16, H}, DType::F32);
  const std::vector<float> hp = host(s0.be, s0.model.body(pad, Tensor(), s0.kv, &x0));
  EXPECT_EQ(std::vector<float>(hp.begin(), hp.begin() + static_cast<long>(hidden.size())), hidden);
  // Stage 1: its input rows (real, then padding) copied into x1 by the body, the head on the real rows.
  Tensor in1 = s1.be.empty({16, H}, DType::F32), x1 = s1.be.empty({16, H}, DType::F32);
  s1.be.copy(x0, in1);
  s1.model.body(pad, in1, s1.kv, &x1);
  EXPECT_EQ(host(s1.be, s1.model.head(real, rows_view(x1, 0, real.num_tokens()))), eager);
}

// LoRA: a padded step keeps its sequences' adapters, the padding has none; each token's index into the
// adapter stacks (StepMeta::lora_rows) is its sequence's slot - 1, -1 for the base model and the padding.
TEST(StepGraphs, PaddedStepsKeepTheirLoraAdapters) {
  StepMeta decode = step_meta_from_plan(decode_plan(), kBlock);
  ASSERT_EQ(decode.num_seqs(), 3);
  EXPECT_TRUE(pad_decode_step(decode, 8, 6, 24).lora.empty());  // (no adapter in the step: none padded in)
  decode.lora = {2, 0, 1};
  const StepMeta d = pad_decode_step(decode, 8, 6, 24);
  EXPECT_EQ(d.lora, (std::vector<int32_t>{2, 0, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(d.lora_rows(), (std::vector<int32_t>{1, -1, 0, -1, -1, -1, -1, -1}));

  StepMeta mixed = step_meta_from_plan(mixed_plan(), kBlock);
  ASSERT_EQ(mixed.num_seqs(), 3);
  mixed.lora = {1, 3, 0};
  std::vector<int32_t> want(16, -1);
  for (int s = 0; s < 3; ++s)
    for (int32_t t = mixed.q_start[s]; t < mixed.q_start[s + 1]; ++t) want[t] = mixed.lora[s] - 1;
  ASSERT_NE(std::count(want.begin(), want.begin() + 6, 2), 0);  // (some rows of each kind among the real ones)
  ASSERT_NE(std::count(want.begin(), want.begin() + 6, -1), 0);
  const StepMeta m = pad_mixed_step(mixed, 16, 6, 24);
  EXPECT_EQ(m.lora.size(), static_cast<size_t>(m.num_seqs()));
  EXPECT_EQ(m.lora_rows(), want);
}

namespace {

// The CPU backend with graphs that record what their pass launched: the ops run as they are issued (a
// capture's pass computes like an eager one), each graph remembers whether its pass ran the LoRA kernels,
// and a replay logs the graph it was asked for.
class GraphLogBackend : public CpuBackend {
 public:
  bool supports_graphs() const override { return true; }
  void graph_capture_begin() override { shrinks_ = 0; }
  int graph_capture_end() override {
    with_lora.push_back(shrinks_ > 0);
    return static_cast<int>(with_lora.size()) - 1;
  }
  bool graph_replay(int id) override {
    replayed.push_back(id);
    return true;
  }
  void lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) override {
    ++shrinks_;
    CpuBackend::lora_shrink(in, a, t);
  }
  std::vector<bool> with_lora;  // per graph id
  std::vector<int> replayed;

 private:
  int shrinks_ = 0;
};

// A rank-2 adapter of every layer's q_proj.
LoraAdapter q_adapter(const ModelSpec& spec) {
  LoraAdapter ad;
  ad.name = "q";
  ad.rank = 2;
  ad.scaling = 1;
  ad.layers.resize(static_cast<size_t>(spec.num_layers));
  for (auto& l : ad.layers) {
    l[kLoraQ].a.assign(static_cast<size_t>(2 * spec.hidden_size), 0.1f);
    l[kLoraQ].b.assign(static_cast<size_t>(spec.num_heads * spec.head_dim * 2), 0.1f);
  }
  return ad;
}

}  // namespace

// With adapters loaded every bucket is recorded twice (vLLM's cudagraph_specialize_lora): a step whose
// sequences have no adapter replays the graph of the base model's fused ops, a step with one the graph
// of the LoRA kernels, of the same bucket; without adapters there is one graph a bucket.
TEST(StepGraphs, StepsWithoutAnAdapterReplayTheGraphsWithoutLora) {
  for (const bool adapters : {true, false}) {
    StageOn<GraphLogBackend> st(0, 1);
    if (adapters) st.model.set_loras({q_adapter(st.spec)});
    DecodeGraphs dg(st.model, st.be, st.topo, DecodeGraphs::bucket_sizes(8), 24, kBlock);
    MixedGraphs mg(st.model, st.be, st.topo, MixedGraphs::bucket_sizes(32), 24, kBlock);
    for (StepGraphs* g : {static_cast<StepGraphs*>(&dg), static_cast<StepGraphs*>(&mg)}) {
      const size_t first = st.be.with_lora.size();
      g->capture(st.kv);
      const auto n = static_cast<int64_t>(g->buckets().size());
      EXPECT_EQ(g->graphs(), adapters ? 2 * n : n);
      EXPECT_EQ(std::count(st.be.with_lora.begin() + static_cast<long>(first), st.be.with_lora.end(), true), adapters ? n : 0);
    }
    for (StepMeta m : {step_meta_from_plan(decode_plan(), kBlock), step_meta_from_plan(mixed_plan(), kBlock)}) {
      StepGraphs& g = m.num_tokens() == m.num_seqs() ? static_cast<StepGraphs&>(dg) : mg;
      Tensor out;
      ASSERT_TRUE(g.run(m, Tensor(), &out));
      const int base = st.be.replayed.back();
      EXPECT_FALSE(st.be.with_lora[static_cast<size_t>(base)]);
      if (!adapters) {
        m.lora = {0, 1, 0};
        EXPECT_THROW(g.run(m, Tensor(), &out), Error);
        continue;
      }
      m.lora = {0, 1, 0};
      ASSERT_TRUE(g.run(m, Tensor(), &out));
      const int with = st.be.replayed.back();
      EXPECT_TRUE(st.be.with_lora[static_cast<size_t>(with)]);
      EXPECT_NE(with, base);
    }
  }
}

// Runtime LoRA updating: stacks reserved for more slots, a larger rank and every projection, with an adapter
// put into a later slot, give that adapter's rows the logits of the compact stacks set_loras makes (the
// padding is zeros); a slot outside the stacks, a rank past theirs or a projection they do not hold is refused.
TEST(Transformer, AdapterPutIntoReservedStacksMatchesSetLoras) {
  Stage compact(0, 1), reserved(0, 1);
  const LoraAdapter ad = q_adapter(compact.spec);
  compact.model.set_loras({ad});
  std::array<bool, kLoraTargets> all;
  all.fill(true);
  reserved.model.reserve_loras(3, 8, all);
  reserved.model.put_lora(2, ad);
  StepMeta m = step_meta_from_plan(prefill_plan(), kBlock);
  m.lora = {1, 0, 1};
  const std::vector<float> want = host(compact.be, compact.model.forward(m, Tensor(), compact.kv));
  m.lora = {2, 0, 2};
  const std::vector<float> got = host(reserved.be, reserved.model.forward(m, Tensor(), reserved.kv));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5f * (1.f + std::abs(want[i]))) << i;
  m.lora = {0, 0, 0};
  const std::vector<float> base = host(reserved.be, reserved.model.forward(m, Tensor(), reserved.kv));
  EXPECT_NE(base, got);  // (the adapter changes the logits)
  EXPECT_THROW(reserved.model.put_lora(4, ad), Error);
  LoraAdapter wide = ad;
  wide.rank = 16;
  EXPECT_THROW(reserved.model.put_lora(1, wide), Error);
  Stage q_less(0, 1);
  std::array<bool, kLoraTargets> no_q = all;
  no_q[kLoraQ] = false;
  q_less.model.reserve_loras(1, 8, no_q);
  EXPECT_THROW(q_less.model.put_lora(1, ad), Error);
}

// vLLM's CUDA-graph options as the two kinds of graphs take them (model/graph_sizes.h).
TEST(GraphPlan, VllmOptionsPickTheGraphs) {
  auto plan = [](std::vector<std::string> args) {
    Config c;
    c.max_num_seqs = 48;
    c.max_num_batched_tokens = 8192;
    c.model = "m.h5";
    config_parse_args(c, args);
    config_validate(c);
    return graph_plan(c);
  };
  using V = std::vector<int64_t>;
  const GraphPlan d = plan({});
  EXPECT_EQ(d.decode, DecodeGraphs::bucket_sizes(48));
  EXPECT_EQ(d.mixed, MixedGraphs::bucket_sizes(8192));
  for (auto args : std::vector<std::vector<std::string>>{{"--enforce-eager"},
                                                         {"--compilation-config", "{\"cudagraph_mode\": \"NONE\"}"},
                                                         {"-O0"},
                                                         {"-O", "0"},
                                                         {"--compilation-config", "0"},
                                                         {"--compilation-config", "{\"use_cudagraph\": false}"},
                                                         {"--max-cudagraph-capture-size", "0"}}) {
    const GraphPlan p = plan(args);
    EXPECT_TRUE(p.decode.empty() && p.mixed.empty()) << args[0];
  }
  // -O0 with an explicit mode keeps that mode's graphs; -O3 keeps the default.
  EXPECT_EQ(plan({"-O0", "--cudagraph-mode", "full"}).decode, d.decode);
  EXPECT_EQ(plan({"-O3"}).mixed, d.mixed);
  const GraphPlan decode_only = plan({"--compilation-config", "{\"cudagraph_mode\": \"full_decode_only\"}"});
  EXPECT_EQ(decode_only.decode, d.decode);
  EXPECT_TRUE(decode_only.mixed.empty());
  // A list: batch sizes up to max_num_seqs, token counts up to 256.
  const GraphPlan listed = plan({"--cudagraph-capture-sizes", "64", "1", "2", "4", "32", "512", "4"});
  EXPECT_EQ(listed.decode, (V{1, 2, 4, 32}));
  EXPECT_EQ(listed.mixed, (V{1, 2, 4, 32, 64}));
  EXPECT_EQ(plan({"--compilation-config", "{\"cudagraph_capture_sizes\": [8, 16], \"max_cudagraph_capture_size\": 16}"}).decode, (V{8, 16}));
  // The largest size: the default patterns up to it.
  const GraphPlan capped = plan({"--max-cudagraph-capture-size", "20"});
  EXPECT_EQ(capped.decode, (V{1, 2, 4, 8, 16}));
  EXPECT_EQ(capped.mixed, (V{16}));
  // vLLM's older cuda_graph_sizes: one value the largest, several the sizes.
  EXPECT_EQ(plan({"--cuda-graph-sizes", "20"}).decode, capped.decode);
  EXPECT_EQ(plan({"--cuda-graph-sizes", "2", "6"}).mixed, (V{2, 6}));
  EXPECT_EQ(plan({"--cudagraph-capture-sizes", "[3, 5]"}).decode, (V{3, 5}));
  EXPECT_EQ(plan({"--cudagraph-capture-sizes", "3,5"}).decode, (V{3, 5}));
  // Errors name the option.
  auto refused = [&](std::vector<std::string> args, const std::string& msg) {
    try {
      plan(args);
      ADD_FAILURE() << "accepted: " << msg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  refused({"--compilation-config", "{\"cudagraph_mode\": \"SOMETIMES\"}"}, "cudagraph_mode must be NONE, PIECEWISE");
  refused({"--compilation-config", "{\"graph_sizes\": [1]}"}, "compilation_config key 'graph_sizes' is not known");
  refused({"--compilation-config", "{\"cudagraph_capture_sizes\": [0]}"}, "must be a list of positive integers");
  refused({"--compilation-config", "[1]"}, "compilation_config must be a JSON object");
  refused({"--cudagraph-capture-sizes", "1", "8", "--max-cudagraph-capture-size", "4"}, "must be the largest of cudagraph_capture_sizes");
  refused({"--cuda-graph-sizes", "8", "--max-cudagraph-capture-size", "8"}, "give one of them");
  refused({"-O5"}, "optimization level (-O) must be 0, 1, 2 or 3");
  refused({"--cudagraph-capture-sizes", "-2"}, "must be positive integers");
  refused({"--cudagraph-capture-sizes", "0"}, "must be positive integers");
  // torch.compile's keys are accepted without effect.
  EXPECT_EQ(plan({"--compilation-config", "{\"level\": 3, \"use_inductor\": false, \"custom_ops\": [\"none\"]}"}).decode, d.decode);
}
