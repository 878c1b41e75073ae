#include "backend/backend.h"

#include <algorithm>
#include <cmath>

#include "backend/moe_route.h"
#include "common/error.h"
#include "kernels/fp8.h"

namespace llmserve {

std::vector<int32_t> StepMeta::lora_rows() const {
  std::vector<int32_t> rows(static_cast<size_t>(num_tokens()), -1);
  for (int64_t s = 0; s < static_cast<int64_t>(lora.size()) && s < num_seqs(); ++s)
    std::fill(rows.begin() + q_start[s], rows.begin() + q_start[s + 1], lora[s] - 1);
  return rows;
}

void Backend::gate_up_silu_composed(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act,
                                    const LoraDelta* lora) {
  const int64_t T = x.shape.empty() ? 1 : x.shape[0], I = w_gate.shape[0];
  if (gate_up.dtype != DType::F32 || gate_up.numel() < 2 * T * I)
    throw std::invalid_argument("gate_up_silu: the scratch must hold 2 x tokens x intermediate float32 values");
  Tensor gate = gate_up, up = gate_up;
  gate.shape = up.shape = {T, I};
  up.data = static_cast<float*>(gate_up.data) + T * I;
  linear(x, w_gate, nullptr, gate);
  linear(x, w_up, nullptr, up);
  if (lora) lora_update(x, *lora, {&gate, &up, nullptr});
  silu_mul(gate, up, act);
}

void Backend::moe(const Tensor& h, const MoeWeights& w, Tensor& out, bool accumulate) {
  const int64_t T = h.dim(0), H = h.dim(1), E = w.router.dim(0), M = w.down.dim(1);
  if (out.dtype != DType::F32 || out.numel() < T * H || w.gate_up.dim(0) != E * 2 * M || w.down.dim(0) != E * H)
    throw std::invalid_argument("moe: shapes of the experts or the output do not match");
  Tensor logits = empty({T, E}, DType::F32);
  linear(h, w.router, nullptr, logits);
  std::vector<float> lg(static_cast<size_t>(T * E)), hh(static_cast<size_t>(T * H));
  download(logits, lg.data());
  download(h, hh.data());
  const MoeRows rows = moe_rows(moe_route(lg.data(), T, E, w.top_k, w.renormalize), T, E, w.top_k);
  std::vector<float> acc(static_cast<size_t>(T * H), 0.f), xe, ye;
  if (accumulate) copy_to_host(out, 0, acc.size() * sizeof(float), acc.data());
  for (int64_t e = 0; e < E; ++e) {
    const auto& mine = rows.rows[static_cast<size_t>(e)];
    if (mine.empty()) continue;
    const int64_t n = static_cast<int64_t>(mine.size());
    xe.resize(static_cast<size_t>(n * H));
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(hh.begin() + mine[static_cast<size_t>(i)].first * H, H, xe.begin() + i * H);
    const Tensor x = upload(xe.data(), {n, H}, h.dtype);
    Tensor gate_up = empty({n, 2 * M}, DType::F32), act = empty({n, M}, h.dtype), y = empty({n, H}, DType::F32);
    gate_up_silu(x, rows_view(w.gate_up, e * 2 * M, M), rows_view(w.gate_up, e * 2 * M + M, M), gate_up, act);
    linear(act, rows_view(w.down, e * H, H), nullptr, y);
    ye.resize(static_cast<size_t>(n * H));
    download(y, ye.data());
    for (int64_t i = 0; i < n; ++i) {
      const auto [t, weight] = mine[static_cast<size_t>(i)];
      float* dst = acc.data() + t * H;
      const float* src = ye.data() + i * H;
      for (int64_t c = 0; c < H; ++c) dst[c] += weight * src[c];
    }
  }
  copy_from_host(out, 0, static_cast<size_t>(T * H) * sizeof(float), acc.data());
}

bool stacked_rows(const std::vector<const Tensor*>& parts) {
  if (parts.empty()) return false;
  const Tensor& first = *parts[0];
  const std::vector<int64_t> tail(first.shape.begin() + (first.shape.empty() ? 0 : 1), first.shape.end());
  const char* next = static_cast<const char*>(first.data);
  int64_t rows = 0;  // (an F8E4M3 part's row scales follow the previous part's too)
  for (const Tensor* t : parts) {
    if (!t || !t->data || t->shape.empty() || t->dtype != first.dtype ||
        std::vector<int64_t>(t->shape.begin() + 1, t->shape.end()) != tail || t->data != next ||
        t->scale != (first.scale ? first.scale + rows : nullptr))
      return false;
    next += t->bytes();
    rows += t->shape[0];
  }
  return true;
}

Tensor stacked_view(const std::vector<const Tensor*>& parts) {
  if (!stacked_rows(parts)) throw std::invalid_argument("stacked_view: the tensors are not consecutive rows of one matrix");
  Tensor v = *parts[0];
  for (size_t i = 1; i < parts.size(); ++i) v.shape[0] += parts[i]->shape[0];
  return v;
}

Tensor Backend::upload_fp8(const float* host, const std::vector<int64_t>& shape, DType dtype, bool host_memory) {
  LLMSERVE_CHECK(shape.size() == 2, "upload_fp8: a matrix [rows, cols]");
  const int64_t rows = shape[0], cols = shape[1];
  std::vector<float> values(static_cast<size_t>(rows * cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = host + r * cols;
    float amax = 0.f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(in[c]));
    const int e = fp8_scale_exponent(amax);
    const float scale = fp8_pow2(e);
    for (int64_t c = 0; c < cols; ++c) values[static_cast<size_t>(r * cols + c)] = e4m3_to_f32(fp8_quantize(in[c], e)) * scale;
  }
  return host_memory ? upload_to_host_memory(values.data(), shape, dtype) : upload(values.data(), shape, dtype);
}

}  // namespace llmserve
