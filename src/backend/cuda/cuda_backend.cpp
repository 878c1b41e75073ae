#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "kernels/cuda/ops.cuh"
#include "kv/kv_cache.h"

namespace llmserve {
namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA ", what, ": ", cudaGetErrorString(e)));
}
// Pinned host memory for at least `need` elements of T in `p` (capacity `cap` elements), replaced by one
// of `grow_to` elements when too small (the contents are not kept).
template <typename T>
void reserve_pinned(T*& p, size_t& cap, size_t need, size_t grow_to, const char* what) {
  if (need <= cap) return;
  if (p) ck(cudaFreeHost(p), what);
  p = nullptr;
  cap = 0;
  ck(cudaMallocHost(reinterpret_cast<void**>(&p), grow_to * sizeof(T)), what);
  cap = grow_to;
}
void lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(cat("cuBLASLt ", what, " failed (status ", static_cast<int>(s), ")"));
}
cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F8E4M3: return CUDA_R_8F_E4M3;
  }
  return CUDA_R_32F;
}

// Calls f with a typed null pointer selecting the kernel instantiation of dtype t.
template <typename F>
void dispatch(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(static_cast<float*>(nullptr)); return;
    case DType::F16: f(static_cast<__half*>(nullptr)); return;
    case DType::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return;
    case DType::F8E4M3: break;  // (weights only: the ops that take them check for them first)
  }
  throw Error(cat("cuda backend: no kernel for ", dtype_name(t), " operands here"));
}

// A KV cache's element type: the activation type, or E4M3 codes (kv_cache_dtype fp8).
template <typename F>
void dispatch_cache(DType t, F&& f) {
  if (t == DType::F8E4M3) return f(static_cast<__nv_fp8_e4m3*>(nullptr));
  dispatch(t, f);
}

// Two-type dispatch for ops whose input may be the float32 residual stream: (same, same) or
// (float32, activation type).
template <typename F>
void dispatch2(DType in, DType out, F&& f) {
  if (in == out) {
    dispatch(in, [&](auto* tag) { f(tag, tag); });
  } else if (in == DType::F32) {
    dispatch(out, [&](auto* tag) { f(static_cast<float*>(nullptr), tag); });
  } else if (out == DType::F32) {
    dispatch(in, [&](auto* tag) { f(tag, static_cast<float*>(nullptr)); });
  } else {
    throw Error("cuda backend: unsupported mix of element types");
  }
}

// An on/off measuring switch from the environment: "1" on, "0" off, anything else (or unset) the default's.
std::optional<bool> env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (!v || (std::string(v) != "0" && std::string(v) != "1")) return std::nullopt;
  return std::string(v) == "1";
}

// Stacked q/k/v and gate/up weights as one GEMM each on steps of more than 4 tokens, unless the
// environment sets LLMSERVE_STACKED_GEMMS=0 (for measuring what it brings).
bool stacked_gemms() {
  static const bool on = env_switch("LLMSERVE_STACKED_GEMMS").value_or(true);
  return on;
}

// The measuring switches the CUDA code reads from the environment, and the values each takes; any other
// value is ignored (the default holds), said once so that a typo does not pass for a measurement.
void warn_ignored_switches() {
  static const bool once = [] {
    const std::pair<const char*, std::vector<std::string>> switches[] = {
        {"LLMSERVE_CUDA_PDL", {"0", "1"}},
        {"LLMSERVE_STACKED_GEMMS", {"0", "1"}},
        {"LLMSERVE_SKINNY_GEMM", {"0", "1"}},
        {"LLMSERVE_FP8_GEMM", {"0", "1"}},
        {"LLMSERVE_DECODE_ATTN_WARPS", {"4", "8"}},
        {"LLMSERVE_PREFILL_WGMMA", {"0", "1"}},
        {"LLMSERVE_PREFILL_KEYS", {"64", "128"}},
        {"LLMSERVE_PREFILL_TMA", {"0", "1"}},
        {"LLMSERVE_FP8_KV_WIDEN", {"0", "1"}},
        {"LLMSERVE_PREFILL_DECODE_ROWS", {"0", "1"}},
        {"LLMSERVE_SKINNY_MIN_TOKENS", {"1", "2", "3", "4", "5"}},
        {"LLMSERVE_SKINNY_FP8_MIN_TOKENS", {"1", "2", "3", "4", "5"}},
        {"LLMSERVE_SKINNY_BIG_MIN_TOKENS", {"1", "2", "3", "4", "5"}},
        {"LLMSERVE_SKINNY_FP8_BIG_MIN_TOKENS", {"1", "2", "3", "4", "5"}},
        {"LLMSERVE_SKINNY_NORM_INSIDE", {"0", "1"}},
        {"LLMSERVE_LORA_SHRINK_NORM", {"0", "1"}},
        {"LLMSERVE_LORA_EXPAND_ROWS", {"1", "2", "3", "4", "5", "6", "7", "8"}}};
    for (const auto& [name, values] : switches) {
      const char* e = std::getenv(name);
      if (!e || std::find(values.begin(), values.end(), std::string(e)) != values.end()) continue;
      std::string allowed;
      for (const auto& v : values) allowed += (allowed.empty() ? "" : " or ") + v;
      log_warn(name, "=", e, " is ignored (it takes ", allowed, ")");
    }
    return true;
  }();
  (void)once;
}

int64_t rows_of(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
int64_t cols_of(const Tensor& t) {
  int64_t c = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) c *= t.shape[i];
  return c;
}

// The LoRA update `d` of T tokens as a decode GEMV adds it in its epilogue (cuda::LoraFused, the tokens'
// adapters at token_rows), where it can: B^T stacks in the activation type `act`, of one rank up to
// cuda::kMaxFusedLoraRank, each as wide as its projection's output (out_rows[j]).
bool fusable_lora(const Backend::LoraDelta& d, int64_t T, DType act, const std::array<int64_t, 3>& out_rows,
                  const int32_t* token_rows, cuda::LoraFused* f) {
  if (!d.t || d.t->dtype != DType::F32 || rows_of(*d.t) != T) return false;
  cuda::LoraFused L;
  L.t = d.t->as<float>();
  L.tc = cols_of(*d.t);
  L.rows = token_rows;
  for (int j = 0; j < 3; ++j) {
    const Tensor* bt = d.bt[j];
    if (!bt) continue;
    if (bt->dtype != act || bt->shape.size() != 3 || bt->dim(2) != out_rows[static_cast<size_t>(j)]) return false;
    const int64_t R = bt->dim(1);
    if (R < 1 || R > cuda::kMaxFusedLoraRank || (L.R != 0 && R != L.R) || d.col[j] < 0 || d.col[j] + R > L.tc) return false;
    L.R = static_cast<int>(R);
    L.bt[j] = bt->data;
    L.col[j] = d.col[j];
  }
  if (L.R == 0) return false;
  *f = L;
  return true;
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

bool cuda_device_available() { return cuda_device_count() > 0; }

std::unique_ptr<Backend> make_cuda_backend(int local_rank, DType dtype) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) throw Error("backend cuda: no CUDA device is visible on this node");
  return std::make_unique<CudaBackend>(local_rank % n, dtype);
}

CudaBackend::Stream::~Stream() {
  cudaSetDevice(device);
  cudaStreamDestroy(s);
}

CudaBackend::CudaBackend(int device, DType dtype) : device_(device), dtype_(dtype) {
  ck(cudaSetDevice(device_), "set device");
  stream_ = std::make_shared<Stream>();
  stream_->device = device_;
  ck(cudaStreamCreate(&stream_->s), "stream");
  lt(cublasLtCreate(&lt_), "create");
  ck(cudaMalloc(&workspace_, workspace_bytes_), "workspace allocation");
  ck(cudaMalloc(&attention_scratch_, cuda::paged_attention_scratch_bytes()), "attention scratch allocation");
  ck(cudaMemset(attention_scratch_, 0, cuda::paged_attention_scratch_bytes()), "attention scratch");
  cuda::prepare_attention_kernels();
  cuda::prepare_norm_launches();
  ck(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "copy stream");
  ck(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming), "copy event");
  ck(cudaEventCreateWithFlags(&meta_copied_, cudaEventDisableTiming), "metadata event");
  ck(cudaEventCreateWithFlags(&results_, cudaEventDisableTiming), "results event");
  // Tensors are stream-ordered allocations from the device's pool, which keeps freed memory for reuse
  // (cudaFree would synchronise the device at every temporary of every step).
  ck(cudaDeviceGetDefaultMemPool(&pool_, device_), "memory pool");
  uint64_t keep = UINT64_MAX;
  ck(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep), "memory pool threshold");
  cudaDeviceProp p{};
  ck(cudaGetDeviceProperties(&p, device_), "device properties");
  log_info("CUDA backend on device ", device_, " (", p.name, ", ", p.totalGlobalMem >> 20, " MiB), ", dtype_name(dtype_));
  warn_ignored_switches();
  // Linear layers of 5-16 tokens on the skinny GEMMs unless LLMSERVE_SKINNY_GEMM=0 (for measuring them);
  // the norm inside the skinny q/k/v and gate/up launches of 1-4 tokens by the rows' width, or as
  // LLMSERVE_SKINNY_NORM_INSIDE=1 / 0 forces (0: rmsnorm first, then the launch without it).
  skinny_on_ = env_switch("LLMSERVE_SKINNY_GEMM").value_or(true);
  skinny_norm_forced_ = env_switch("LLMSERVE_SKINNY_NORM_INSIDE");
  // Linear layers of 1-4 tokens on the tensor-core skinny kernels from these counts, on the CUDA-core GEMVs
  // below them: 3 tokens for FP8 and 16-bit matrices alike (H200, kernel_bench --few-tokens: the GEMVs
  // lead at 1-2 tokens, the skinny kernels from 3; docs/performance.md, thirty-sixth session); for measuring,
  // LLMSERVE_SKINNY_FP8_MIN_TOKENS / LLMSERVE_SKINNY_MIN_TOKENS = 1..5 move the boundaries (other values:
  // warn_ignored_switches).
  static_assert(cuda::kSkinnyMinTokens == 5, "the switch table lists 1 to kSkinnyMinTokens");
  auto min_tokens = [](const char* name, int64_t& v) {
    const char* t = std::getenv(name);
    if (t && t[0] >= '1' && t[0] <= '5' && t[1] == '\0') v = t[0] - '0';
  };
  min_tokens("LLMSERVE_SKINNY_FP8_MIN_TOKENS", skinny_fp8_min_tokens_);
  min_tokens("LLMSERVE_SKINNY_MIN_TOKENS", skinny_min_tokens_);
  // Matrices of kSkinnyBigWeights or more (together) from 2 tokens, either kind: the two-token GEMV streams
  // the 7B down projection at 2,836 GB/s (bf16) and 1,323 (fp8) where the skinny kernel reaches 3,321 and
  // 2,058; lm_head at 2 rows runs at 73% of copy (H200, kernel_bench --few-tokens and --layers).
  min_tokens("LLMSERVE_SKINNY_BIG_MIN_TOKENS", skinny_big_min_tokens_);
  // One FP8 matrix of that size from 1 token: the one-token FP8 GEMV streams the 7B down projection's
  // codes at 2,065 GB/s where the skinny kernel reaches 2,672 (H200, kernel_bench --few-tokens, thirty-
  // seventh session; the 16-bit GEMV is ahead at one token, 36.36 against 38.72 us).
  min_tokens("LLMSERVE_SKINNY_FP8_BIG_MIN_TOKENS", skinny_fp8_big_min_tokens_);
  // FP8 matrices in steps of more than 16 tokens: expanded to 16 bits for a 16-bit GEMM, or with
  // LLMSERVE_FP8_GEMM=1 FP8 GEMMs over quantized activations (off by default: on an H200 a 2,048-token
  // prefill 7% faster than the expansion, still slower than bf16 weights, for 4e-2 to 1.2e-1 of added
  // logit error on tiny-qwen2; docs/performance.md, thirtieth session).
  fp8_gemm_on_ = env_switch("LLMSERVE_FP8_GEMM").value_or(false);
  // kv_cache_dtype fp8's prefill blocks widened once per layer, and a prefill step's decode rows on the
  // split-KV kernel, unless LLMSERVE_FP8_KV_WIDEN=0 / LLMSERVE_PREFILL_DECODE_ROWS=0 (for measuring them).
  widen_on_ = env_switch("LLMSERVE_FP8_KV_WIDEN").value_or(true);
  split_decode_rows_ = env_switch("LLMSERVE_PREFILL_DECODE_ROWS").value_or(true);
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  for (cudaGraphExec_t g : graphs_)
    if (g) cudaGraphExecDestroy(g);
  for (auto& [k, g] : gemms_) {
    cublasLtMatrixLayoutDestroy(g.a);
    cublasLtMatrixLayoutDestroy(g.b);
    cublasLtMatrixLayoutDestroy(g.c);
  }
  for (auto& [k, a] : gemm_algos_) cublasLtMatmulDescDestroy(a.op);
  for (IntBuffer* b : {&ids_, &positions_, &slots_, &tables_, &token_seq_, &logits_rows_, &tiles_, &widen_blocks_, &widen_tables_})
    if (b->ptr) cudaFree(b->ptr);
  if (widen_k_) cudaFree(widen_k_);
  if (widen_v_) cudaFree(widen_v_);
  if (workspace_) cudaFree(workspace_);
  if (attention_scratch_) cudaFree(attention_scratch_);
  if (weight_stage_) cudaFree(weight_stage_);
  if (draw_device_) cudaFree(draw_device_);
  if (draw_pinned_) cudaFreeHost(draw_pinned_);
  if (drawn_device_) cudaFree(drawn_device_);
  if (drawn_pinned_) cudaFreeHost(drawn_pinned_);
  if (lp_pinned_) cudaFreeHost(lp_pinned_);
  if (results_) cudaEventDestroy(results_);
  if (copied_) cudaEventDestroy(copied_);
  if (meta_pinned_) cudaFreeHost(meta_pinned_);
  if (meta_copied_) cudaEventDestroy(meta_copied_);
  if (copy_stream_) cudaStreamDestroy(copy_stream_);
  if (lt_) cublasLtDestroy(lt_);
}

Tensor CudaBackend::empty(const std::vector<int64_t>& shape, DType dtype) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(t.bytes(), 256);
  const cudaError_t e = cudaMallocAsync(&p, bytes, stream());
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(cat("CUDA: out of device memory allocating ", bytes, " bytes (lower gpu_memory_utilization, max_num_seqs or max_num_batched_tokens)"));
  }
  t.storage = std::shared_ptr<void>(p, [st = stream_](void* q) {
    cudaSetDevice(st->device);
    cudaFreeAsync(q, st->s);
  });
  t.data = p;
  return t;
}

Tensor CudaBackend::upload(const float* host, const std::vector<int64_t>& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  const int64_t n = t.numel();
  if (dtype == DType::F32) {
    ck(cudaMemcpy(t.data, host, n * sizeof(float), cudaMemcpyHostToDevice), "upload");
    return t;
  }
  Tensor tmp = empty(shape, DType::F32);
  ck(cudaMemcpy(tmp.data, host, n * sizeof(float), cudaMemcpyHostToDevice), "upload");
  dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::from_float<T>(tmp.as<float>(), n, t.as<T>(), stream());
  });
  return t;
}

Tensor CudaBackend::upload_to_host_memory(const float* host, const std::vector<int64_t>& shape, DType dtype) {
  // Converted on the device as upload() does (the same bits), then copied into pinned host memory
  // mapped into the device's address space, which kernels and cuBLASLt read over the bus.
  const Tensor staged = upload(host, shape, dtype);
  Tensor t = to_host_memory(staged, staged.bytes());
  reserve_weight_stage(std::max<size_t>(staged.bytes(), 256));  // (gemm_weight's copies)
  return t;
}

Tensor CudaBackend::to_host_memory(const Tensor& staged, size_t size) {
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(size, 256);
  if (cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();
    throw Error(cat("cpu_offload_gb: cannot pin ", bytes, " bytes of host memory for the offloaded weights (",
                    "lower cpu_offload_gb, or raise the memory lock limit: ulimit -l)"));
  }
  void* dev = nullptr;
  if (const cudaError_t e = cudaHostGetDevicePointer(&dev, p, 0); e != cudaSuccess) {
    cudaFreeHost(p);
    cudaGetLastError();  // (cleared: ck reports e)
    ck(e, "offloaded weights' device address");
  }
  const char* first = static_cast<const char*>(dev);
  (*host_weights_)[first] = HostWeight{first + bytes, static_cast<const char*>(p)};
  Tensor t = staged;
  t.data = dev;
  if (staged.scale) t.scale = reinterpret_cast<const float*>(first + (reinterpret_cast<const char*>(staged.scale) - static_cast<const char*>(staged.data)));
  t.storage = std::shared_ptr<void>(p, [registry = host_weights_, first](void* q) {
    registry->erase(first);
    cudaFreeHost(q);
  });
  ck(cudaMemcpyAsync(p, staged.data, size, cudaMemcpyDeviceToHost, stream()), "offload copy");
  ck(cudaStreamSynchronize(stream()), "offload copy");
  return t;
}

void CudaBackend::reserve_weight_stage(size_t bytes) {
  if (bytes <= weight_stage_bytes_) return;
  drop_graphs("a larger matrix than they were recorded with was loaded");  // (they read the old buffer)
  ck(cudaDeviceSynchronize(), "synchronize");
  if (weight_stage_) cudaFree(weight_stage_);
  weight_stage_ = nullptr;
  weight_stage_bytes_ = 0;
  ck(cudaMalloc(&weight_stage_, bytes), "the device buffer of offloaded and FP8 matrices");
  weight_stage_bytes_ = bytes;
}

Tensor CudaBackend::upload_fp8(const float* host, const std::vector<int64_t>& shape, DType dtype, bool host_memory) {
  LLMSERVE_CHECK(shape.size() == 2, "upload_fp8: a matrix [rows, cols]");
  LLMSERVE_CHECK(dtype == dtype_ && dtype_ != DType::F32, "cuda backend: FP8 weights need a 16-bit dtype (bfloat16 or float16)");
  const int64_t rows = shape[0], cols = shape[1];
  // One allocation: the codes, then (16-byte aligned) the rows' scales.
  const size_t codes = static_cast<size_t>(rows * cols), at = (codes + 15) / 16 * 16, size = at + 4 * static_cast<size_t>(rows);
  Tensor q = empty({static_cast<int64_t>(size)}, DType::F8E4M3);
  q.shape = shape;
  q.scale = reinterpret_cast<const float*>(static_cast<char*>(q.data) + at);
  {
    Tensor tmp = empty(shape, DType::F32);
    ck(cudaMemcpy(tmp.data, host, codes * sizeof(float), cudaMemcpyHostToDevice), "upload");
    cuda::fp8_quantize_rows(tmp.as<float>(), rows, cols, static_cast<__nv_fp8_e4m3*>(q.data), const_cast<float*>(q.scale),
                            stream());
  }
  // A GEMM of many tokens reads the matrix expanded to 16 bits (dequantized()).
  reserve_weight_stage(std::max<size_t>(codes * dtype_size(dtype_), 256));
  return host_memory ? to_host_memory(q, size) : q;
}

// The kernels that read the expansion must be launched under a cuda::PdlHold: they request their weights
// before pdl_enter(), which would let them read the buffer before this expansion has written it.
Tensor CudaBackend::dequantized(const Tensor& w) {
  if (w.dtype != DType::F8E4M3) return w;
  const int64_t rows = rows_of(w), cols = cols_of(w);
  Tensor d;
  d.shape = w.shape;
  d.dtype = dtype_;
  LLMSERVE_CHECK(w.scale && d.bytes() <= weight_stage_bytes_, "cuda backend: an FP8 matrix without scales, or past the device buffer");
  d.data = weight_stage_;
  dispatch(dtype_, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::fp8_dequantize_rows<T>(static_cast<const __nv_fp8_e4m3*>(w.data), w.scale, rows, cols, static_cast<T*>(d.data), stream());
  });
  ++dequantized_;
  return d;
}

const void* CudaBackend::gemm_weight(const Tensor& w) {
  const char* p = static_cast<const char*>(w.data);
  auto it = host_weights_->upper_bound(p);
  if (it == host_weights_->begin() || p >= std::prev(it)->second.end) return w.data;  // on the device
  --it;
  LLMSERVE_CHECK(p + w.bytes() <= it->second.end && w.bytes() <= weight_stage_bytes_,
                 "cuda backend: a GEMM's matrix runs past its offloaded allocation");
  ck(cudaMemcpyAsync(weight_stage_, it->second.host + (p - it->first), w.bytes(), cudaMemcpyHostToDevice, stream()),
     "offloaded matrix copy");
  ++offloaded_copies_;
  return weight_stage_;
}

void CudaBackend::download(const Tensor& t, float* host) {
  const int64_t n = t.numel();
  if (n == 0) return;
  if (t.dtype == DType::F8E4M3) {  // codes times scales
    LLMSERVE_CHECK(t.scale != nullptr, "cuda backend: an FP8 tensor without scales");
    Tensor tmp = empty(t.shape, DType::F32);
    cuda::fp8_dequantize_rows<float>(static_cast<const __nv_fp8_e4m3*>(t.data), t.scale, rows_of(t), cols_of(t),
                                     tmp.as<float>(), stream());
    ck(cudaMemcpy(host, tmp.data, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
    return;
  }
  if (t.dtype == DType::F32) {
    ck(cudaMemcpy(host, t.data, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
    return;
  }
  Tensor tmp = empty(t.shape, DType::F32);
  dispatch(t.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::to_float<T>(t.as<T>(), n, tmp.as<float>(), stream());
  });
  ck(cudaMemcpy(host, tmp.data, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
}

void CudaBackend::copy_to_host(const Tensor& src, size_t offset, size_t bytes, void* dst) {
  LLMSERVE_CHECK(offset + bytes <= src.bytes(), "cuda backend: copy out of range");
  ck(cudaMemcpy(dst, static_cast<const char*>(src.data) + offset, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

void CudaBackend::copy_from_host(Tensor& dst, size_t offset, size_t bytes, const void* src) {
  LLMSERVE_CHECK(offset + bytes <= dst.bytes(), "cuda backend: copy out of range");
  ck(cudaMemcpy(static_cast<char*>(dst.data) + offset, src, bytes, cudaMemcpyHostToDevice), "copy from host");
}

void CudaBackend::drop_graphs(const char* why) {
  if (std::none_of(graphs_.begin(), graphs_.end(), [](cudaGraphExec_t g) { return g != nullptr; })) return;
  log_warn("CUDA graphs dropped: ", why, "; steps run eagerly");
  for (cudaGraphExec_t& g : graphs_)
    if (g) cudaGraphExecDestroy(g), g = nullptr;
}

void CudaBackend::grow(IntBuffer& b, size_t cap) {
  if (b.graphs_read) drop_graphs("a step needs larger metadata buffers than they were recorded with");  // they read the old buffer
  ck(cudaDeviceSynchronize(), "synchronize");
  if (b.ptr) cudaFree(b.ptr);
  b.cap = cap;
  ck(cudaMalloc(&b.ptr, b.cap * sizeof(int32_t)), "metadata allocation");
  // Entries no step writes (a compact block table's, between rows) hold block 0, not garbage.
  ck(cudaMemset(b.ptr, 0, b.cap * sizeof(int32_t)), "metadata allocation");
}

void CudaBackend::put(const std::vector<Upload>& items) {
  // The previous step's copies are done before their buffers or the staging are replaced or rewritten.
  ck(cudaEventSynchronize(meta_copied_), "metadata staging");
  size_t total = 0;
  for (const Upload& u : items) {
    if (u.device_entries() > u.to->cap) grow(*u.to, std::max<size_t>(u.device_entries() * 2, 1024));
    total += u.from->size();
  }
  reserve_pinned(meta_pinned_, meta_cap_, total, std::max<size_t>(total * 2, 4096), "metadata staging");
  size_t at = 0;
  for (const Upload& u : items) {
    const std::vector<int32_t>& v = *u.from;
    if (v.empty()) continue;
    std::memcpy(meta_pinned_ + at, v.data(), v.size() * sizeof(int32_t));
    if (u.strided())
      ck(cudaMemcpy2DAsync(u.to->ptr, u.pitch * sizeof(int32_t), meta_pinned_ + at, u.width * sizeof(int32_t),
                           u.width * sizeof(int32_t), v.size() / u.width, cudaMemcpyHostToDevice, stream()),
         "metadata upload");
    else
      ck(cudaMemcpyAsync(u.to->ptr, meta_pinned_ + at, v.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream()),
         "metadata upload");
    at += v.size();
  }
  ck(cudaEventRecord(meta_copied_, stream()), "metadata upload");
}

bool CudaBackend::device_memory(size_t* free_bytes, size_t* total_bytes) {
  ck(cudaSetDevice(device_), "set device");
  ck(cudaDeviceSynchronize(), "synchronize");
  ck(cudaMemGetInfo(free_bytes, total_bytes), "memory info");
  return true;
}

size_t CudaBackend::tensor_memory() {
  ck(cudaDeviceSynchronize(), "synchronize");
  uint64_t v = 0;
  ck(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &v), "pool usage");
  return static_cast<size_t>(v);
}

void CudaBackend::reset_peak_memory() {
  ck(cudaDeviceSynchronize(), "synchronize");
  uint64_t zero = 0;
  ck(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero), "reset pool peak");
}

size_t CudaBackend::peak_memory() {
  ck(cudaDeviceSynchronize(), "synchronize");
  uint64_t v = 0;
  ck(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &v), "pool peak");
  return static_cast<size_t>(v);
}

void CudaBackend::synchronize() { ck(cudaDeviceSynchronize(), "synchronize"); }

void CudaBackend::trim_memory() {
  ck(cudaDeviceSynchronize(), "synchronize");
  ck(cudaMemPoolTrimTo(pool_, 0), "trim memory pool");
}

void CudaBackend::begin_step(const StepMeta& m) {
  ck(cudaSetDevice(device_), "set device");  // rank 0 runs steps on the engine thread
  num_tokens_ = m.num_tokens();
  num_seqs_ = m.num_seqs();
  max_blocks_ = m.max_blocks;
  max_len_ = m.max_context;
  if (max_len_ <= 0)
    for (int32_t p : m.positions) max_len_ = std::max<int64_t>(max_len_, p + 1);
  num_logits_ = static_cast<int64_t>(m.logits_indices.size());
  // Tensor-core prefill attention when some sequence brings a run of new tokens (decode steps, and
  // every graph, keep the split-KV kernel).
  int64_t max_q = 0;
  for (int64_t s = 0; s < num_seqs_; ++s) max_q = std::max<int64_t>(max_q, m.q_start[s + 1] - m.q_start[s]);
  // A graph-shaped step (max_context) is sized by its bounds, and keeps the split-KV kernel (the prefill
  // kernel's tiles are made on the host per step).
  flash_ = m.max_context == 0 && max_q >= kFlashMinQueries;
  max_new_ = m.max_context > 0 ? std::max<int64_t>(m.max_new, max_q) : max_q;
  if (capturing_) return;  // uploaded before the capture; a graph must not record host copies
  std::vector<int32_t> tiles, token_seq(static_cast<size_t>(num_tokens_)), widen_blocks, widen_tables;
  for (int64_t s = 0; s < num_seqs_; ++s)
    for (int32_t t = m.q_start[s]; t < m.q_start[s + 1]; ++t) token_seq[t] = static_cast<int32_t>(s);
  // In a prefill step the sequences of fewer than kFlashMinQueries new tokens (decodes beside a prompt's
  // chunk, short prompts) take the split-KV decode kernel, a launch for each run of adjacent ones, where
  // there are at most kMaxDecodeRuns runs; the prefill kernel's tiles are the other sequences'.
  decode_runs_.clear();
  decode_len_ = decode_new_ = 0;
  std::vector<char> prefill_seq;  // (prefill steps only: decode steps allocate nothing here)
  if (flash_) {
    prefill_seq.assign(static_cast<size_t>(num_seqs_), 1);
    auto short_run = [&](int64_t s) { return m.q_start[s + 1] - m.q_start[s] < kFlashMinQueries; };
    std::vector<std::pair<int64_t, int64_t>> runs;  // (first sequence, past the last)
    for (int64_t s = 0; s < num_seqs_; ++s)
      if (short_run(s)) {
        if (runs.empty() || runs.back().second != s) runs.push_back({s, s});
        runs.back().second = s + 1;
      }
    if (!runs.empty() && runs.size() <= kMaxDecodeRuns && split_decode_rows_) {
      for (const auto& [s0, s1] : runs) {
        decode_runs_.push_back({m.q_start[s0], m.q_start[s1] - m.q_start[s0]});
        for (int64_t s = s0; s < s1; ++s) {
          prefill_seq[static_cast<size_t>(s)] = 0;
          decode_new_ = std::max<int64_t>(decode_new_, m.q_start[s + 1] - m.q_start[s]);
        }
        for (int64_t t = m.q_start[s0]; t < m.q_start[s1]; ++t)
          decode_len_ = std::max<int64_t>(decode_len_, m.positions[t] + 1);
      }
    }
    for (int32_t t0 : cuda::flash_prefill_tiles(m.q_start, m.positions))
      if (prefill_seq[static_cast<size_t>(token_seq[t0])]) tiles.push_back(t0);
    num_tiles_ = static_cast<int64_t>(tiles.size());
  }
  // kv_cache_dtype fp8: the blocks of the prefill kernel's sequences whose blocks fit reserve_kv_widening's
  // buffers (runs of new tokens first), to be widened once per layer; their tiles go first (each part
  // keeps its order).
  widen_count_ = widen_tiles_ = 0;
  std::vector<char> taken;
  if (flash_ && widen_cap_ > 0 && widen_on_ &&
      gather_step_blocks(m, widen_bs_, widen_cap_, static_cast<int32_t>(kFlashMinQueries), widen_blocks, widen_tables, taken,
                         &prefill_seq) > 0) {
    widen_count_ = static_cast<int64_t>(widen_blocks.size());
    const auto rest = std::stable_partition(tiles.begin(), tiles.end(), [&](int32_t t0) { return taken[token_seq[t0]] != 0; });
    widen_tiles_ = rest - tiles.begin();
  } else {
    widen_tables.clear();
  }
  const std::vector<int32_t> lora_rows = m.lora_rows();
  put({{&tiles_, &tiles},
       {&lora_rows_, &lora_rows},
       {&ids_, &m.token_ids},
       {&positions_, &m.positions},
       {&slots_, &m.slot_mapping},
       {&tables_, &m.block_tables, static_cast<size_t>(m.row_entries()), static_cast<size_t>(m.max_blocks)},
       {&token_seq_, &token_seq},
       {&logits_rows_, &m.logits_indices},
       {&widen_blocks_, &widen_blocks},
       {&widen_tables_, &widen_tables}});
  // Pending token ids (asynchronous scheduling): from the last draw's results, on the device.
  if (std::any_of(m.token_ids.begin(), m.token_ids.end(), [](int32_t t) { return t < 0; }))
    cuda::resolve_pending(ids_.ptr, num_tokens_, reinterpret_cast<const int32_t*>(drawn_device_ + drawn_rows_), drawn_rows_,
                          stream());
}

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  LLMSERVE_CHECK(src.bytes() <= dst.bytes(), "cuda backend: copy into a smaller tensor");
  if (src.bytes() > 0)
    ck(cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, stream()), "device copy");
}

void CudaBackend::copy_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t col) {
  const size_t e = dtype_size(src.dtype);
  const ColumnCopy c = check_copy_columns(src, width, dst, col);
  if (c.rows == 0 || width == 0) return;
  ck(cudaMemcpy2DAsync(static_cast<char*>(dst.data) + col * e, c.dst_cols * e, src.data, c.src_cols * e, width * e,
                       c.rows, cudaMemcpyDeviceToDevice, stream()),
     "copy columns");
}

void CudaBackend::reserve_step(int64_t tokens, int64_t seqs, int64_t table_entries) {
  for (IntBuffer* b : {&ids_, &positions_, &slots_, &token_seq_, &logits_rows_, &tiles_, &lora_rows_})
    if (static_cast<size_t>(tokens) > b->cap) grow(*b, static_cast<size_t>(tokens));
  const size_t entries = static_cast<size_t>(std::max(table_entries, seqs));
  if (entries > tables_.cap) grow(tables_, entries);
}

size_t CudaBackend::reserve_kv_widening(int64_t tokens, int64_t block_size, int64_t kv_heads, int64_t head_dim) {
  if (dtype_ == DType::F32 || tokens <= 0) return 0;  // (float32 attention reads the codes itself)
  LLMSERVE_CHECK(block_size > 0 && kv_heads > 0 && head_dim > 0, "cuda backend: reserve_kv_widening shapes");
  ck(cudaDeviceSynchronize(), "synchronize");  // (queued kernels may still read the old buffers)
  for (void* p : {widen_k_, widen_v_})
    if (p) cudaFree(p);
  widen_k_ = widen_v_ = nullptr;
  widen_cap_ = 0;
  const int64_t blocks = (tokens + block_size - 1) / block_size;
  const size_t bytes = static_cast<size_t>(blocks * block_size * kv_heads * head_dim) * dtype_size(dtype_);
  if (cudaMalloc(&widen_k_, bytes) != cudaSuccess || cudaMalloc(&widen_v_, bytes) != cudaSuccess) {
    // (Only an optimisation: without the room every prefill widens tile by tile.)
    cudaGetLastError();
    for (void* p : {widen_k_, widen_v_})
      if (p) cudaFree(p);
    widen_k_ = widen_v_ = nullptr;
    log_warn("kv_cache_dtype fp8: no room for ", 2 * bytes >> 20, " MiB to widen a prefill's cache blocks once per layer; ",
             "prefills widen them tile by tile (slower: a smaller max_model_len needs less)");
    return 0;
  }
  widen_cap_ = blocks;
  widen_bs_ = block_size;
  widen_row_ = kv_heads * head_dim;
  return 2 * bytes;
}

void CudaBackend::graph_capture_begin() {
  LLMSERVE_CHECK(!capturing_, "cuda backend: a capture is already running");
  ck(cudaSetDevice(device_), "set device");
  ck(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal), "begin graph capture");
  capturing_ = true;
}

int CudaBackend::graph_capture_end() {
  LLMSERVE_CHECK(capturing_, "cuda backend: no capture is running");
  capturing_ = false;
  cudaGraph_t g = nullptr;
  ck(cudaStreamEndCapture(stream(), &g), "end graph capture");
  cudaGraphExec_t e = nullptr;
  const cudaError_t r = cudaGraphInstantiate(&e, g, 0);
  cudaGraphDestroy(g);
  ck(r, "graph instantiation");
  graphs_.push_back(e);
  return static_cast<int>(graphs_.size()) - 1;
}

void CudaBackend::graph_capture_abort() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t g = nullptr;
  cudaStreamEndCapture(stream(), &g);
  if (g) cudaGraphDestroy(g);
  cudaGetLastError();
}

bool CudaBackend::graph_replay(int id) {
  LLMSERVE_CHECK(id >= 0 && static_cast<size_t>(id) < graphs_.size(), "cuda backend: no graph ", id);
  if (!graphs_[id]) return false;
  ck(cudaGraphLaunch(graphs_[id], stream()), "graph launch");
  return true;
}

size_t CudaBackend::graph_memory() {
  uint64_t v = 0;
  ck(cudaDeviceGetGraphMemAttribute(device_, cudaGraphMemAttrReservedMemCurrent, &v), "graph memory");
  return v;
}

void CudaBackend::embedding(const Tensor& table, int64_t vocab_start, Tensor& out) {
  LLMSERVE_CHECK(out.dtype == table.dtype || out.dtype == DType::F32, "cuda backend: embedding output type");
  dispatch2(table.dtype, out.dtype, [&](auto* ti, auto* to) {
    using TI = std::remove_pointer_t<decltype(ti)>;
    using TO = std::remove_pointer_t<decltype(to)>;
    cuda::embedding<TI, TO>(table.as<TI>(), vocab_start, rows_of(table), ids_.ptr, num_tokens_, cols_of(table), out.as<TO>(),
                            stream());
  });
}

void CudaBackend::rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  LLMSERVE_CHECK(w.dtype == out.dtype && (x.dtype == out.dtype || x.dtype == DType::F32), "cuda backend: rmsnorm types");
  dispatch2(x.dtype, out.dtype, [&](auto* ti, auto* to) {
    using TI = std::remove_pointer_t<decltype(ti)>;
    using TO = std::remove_pointer_t<decltype(to)>;
    cuda::rmsnorm<TI, TO>(x.as<TI>(), w.as<TO>(), rows_of(x), cols_of(x), eps, out.as<TO>(), stream());
  });
}

void CudaBackend::head_rmsnorm(Tensor& x, const Tensor& w, float eps, int64_t D) {
  LLMSERVE_CHECK(x.dtype == DType::F32 && D > 0 && x.numel() % D == 0 && w.numel() == D, "cuda backend: head_rmsnorm shapes");
  dispatch(w.dtype, [&](auto* tw) {
    using TW = std::remove_pointer_t<decltype(tw)>;
    cuda::head_rmsnorm<TW>(x.as<float>(), w.as<TW>(), x.numel() / D, D, eps, stream());
  });
}

void CudaBackend::add(Tensor& x, const Tensor& y) {
  LLMSERVE_CHECK(x.dtype == y.dtype || x.dtype == DType::F32, "cuda backend: add types");
  dispatch2(x.dtype, y.dtype, [&](auto* tx, auto* ty) {
    using TX = std::remove_pointer_t<decltype(tx)>;
    using TY = std::remove_pointer_t<decltype(ty)>;
    if constexpr (std::is_same_v<TX, TY> || std::is_same_v<TX, float>) {
      cuda::add<TX, TY>(x.as<TX>(), y.as<TY>(), x.numel(), stream());
    }
  });
}

void CudaBackend::add_sigmoid_gated(Tensor& x, const Tensor& y, const Tensor& h, const Tensor& gate) {
  LLMSERVE_CHECK(x.dtype == DType::F32 && y.dtype == DType::F32 && gate.dtype == h.dtype && rows_of(y) == rows_of(x) &&
                     cols_of(y) == cols_of(x) && rows_of(h) == rows_of(x) && gate.numel() == cols_of(h),
                 "cuda backend: add_sigmoid_gated shapes or types");
  dispatch(h.dtype, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    cuda::add_sigmoid_gated<TT>(x.as<float>(), y.as<float>(), h.as<TT>(), gate.as<TT>(), rows_of(x), cols_of(x), cols_of(h),
                                stream());
  });
}

int64_t CudaBackend::gemm_token_bucket(int64_t n) {
  return n <= kGemmExactUpTo ? n : (n + kGemmBucket - 1) / kGemmBucket * kGemmBucket;
}

// The heuristic's best algorithm for the layouts of g (an m x n x k GEMM).
cublasLtMatmulAlgo_t CudaBackend::gemm_heuristic(const Gemm& g, int64_t m, int64_t n, int64_t k, DType dt) {
  cublasLtMatmulPreference_t pref;
  lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                          sizeof workspace_bytes_), "workspace preference");
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  ++heuristic_calls_;
  log_debug("cuBLASLt heuristic for a ", m, "x", n, "x", k, " ", dtype_name(dt), " GEMM");
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt_, g.op, g.a, g.b, g.c, g.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0)
    throw Error(cat("cuBLASLt: no algorithm for a ", m, "x", n, "x", k, " ", dtype_name(dt), " GEMM"));
  return res.algo;
}

CudaBackend::Gemm& CudaBackend::gemm_for(int64_t m, int64_t n, int64_t k, DType dt, DType out, bool bias) {
  const GemmKey key{m, n, k, static_cast<int>(dt), static_cast<int>(out), bias};
  auto it = gemms_.find({key, gemm_exact_});
  if (it != gemms_.end()) return it->second;
  // Column-major view: C[m=N, n=T] = W^T(stored K x N)^T . X(stored K x T).
  const cudaDataType_t ct = cuda_type(dt);
  auto layouts = [&](int64_t cols, Gemm& g) {
    lt(cublasLtMatrixLayoutCreate(&g.a, ct, k, m, k), "layout a");
    lt(cublasLtMatrixLayoutCreate(&g.b, ct, k, cols, k), "layout b");
    lt(cublasLtMatrixLayoutCreate(&g.c, cuda_type(out), m, cols, m), "layout c");
  };
  auto drop = [](Gemm& g) {
    for (cublasLtMatrixLayout_t l : {g.a, g.b, g.c})
      if (l) cublasLtMatrixLayoutDestroy(l);
  };
  const int64_t top = gemm_exact_ ? n : gemm_token_bucket(n);
  const GemmKey bucket_key{m, top, k, static_cast<int>(dt), static_cast<int>(out), bias};
  auto ai = gemm_algos_.find(bucket_key);
  if (ai == gemm_algos_.end()) {
    GemmAlgo a;
    lt(cublasLtMatmulDescCreate(&a.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
    lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
    if (bias) {
      const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
      lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep), "epilogue");
    }
    if (dt == DType::F8E4M3) {  // a scale per weight row (A) and per token (B), applied to the products
      const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
      lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode), "a scale mode");
      lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode), "b scale mode");
      // The heuristic refuses this mode without scale pointers set ("requires a custom pointer for A
      // scale"): a device address stands in until run_gemm sets each call's own.
      const void* p = workspace_;
      lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p, sizeof p), "a scale pointer");
      lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p, sizeof p), "b scale pointer");
      if (bias) {  // (an FP8 GEMM's bias is bfloat16 unless told: ours has the output's type, 16-bit here)
        const cudaDataType_t bt = cuda_type(out);
        lt(cublasLtMatmulDescSetAttribute(a.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), "bias type");
      }
    }
    Gemm probe;  // the bucket's top
    probe.op = a.op;
    try {
      layouts(top, probe);
      a.algo = gemm_heuristic(probe, m, top, k, dt);
    } catch (...) {
      drop(probe);
      cublasLtMatmulDescDestroy(a.op);
      throw;
    }
    drop(probe);
    ai = gemm_algos_.emplace(bucket_key, a).first;
  }
  Gemm g;
  g.op = ai->second.op;
  g.algo = ai->second.algo;
  g.bucket = &ai->second;
  try {
    layouts(n, g);
    // The bucket's algorithm where it runs this exact shape within the workspace, else the heuristic's
    // answer for it.
    cublasLtMatmulHeuristicResult_t chk{};
    if (top != n && (cublasLtMatmulAlgoCheck(lt_, g.op, g.a, g.b, g.c, g.c, &g.algo, &chk) != CUBLAS_STATUS_SUCCESS ||
                     chk.workspaceSize > workspace_bytes_)) {
      log_debug("cuBLASLt: the ", m, "x", top, "x", k, " algorithm does not run ", m, "x", n, "x", k);
      g.algo = gemm_heuristic(g, m, n, k, dt);
    }
  } catch (...) {
    drop(g);
    throw;
  }
  return gemms_.emplace(std::make_pair(key, gemm_exact_), g).first->second;
}

void CudaBackend::linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  const int64_t T = rows_of(x), K = cols_of(x), N = rows_of(w);
  LLMSERVE_CHECK(cols_of(w) == K, "cuda backend: linear inner dimensions differ");
  if (T == 0 || N == 0) return;
  LLMSERVE_CHECK(out.dtype == x.dtype || out.dtype == DType::F32, "cuda backend: linear output type");
  LLMSERVE_CHECK(!bias || bias->dtype == out.dtype, "cuda backend: the bias must have the output's type");
  if (w.dtype == DType::F8E4M3) {
    // 1-16 tokens: the skinny GEMMs, on tensor cores over the codes, from skinny_fp8_min_tokens_; the
    // GEMV streaming them below that.
    const bool tiles = skinny_fp8(T, x, {&w}), gemv = !tiles && T <= 4 && x.dtype != DType::F32;
    if ((gemv || tiles) && (!bias || bias->dtype == DType::F32)) {
      dispatch(x.dtype, [&](auto* tag) {
        using TT = std::remove_pointer_t<decltype(tag)>;
        if constexpr (!std::is_same_v<TT, float>) {
          const auto* wc = static_cast<const __nv_fp8_e4m3*>(w.data);
          const float* bp = bias ? bias->as<float>() : nullptr;
          auto run = [&](auto* out_tag) {
            using TO = std::remove_pointer_t<decltype(out_tag)>;
            if (gemv)
              cuda::gemv<TT, TO>(x.as<TT>(), wc, w.scale, bp, T, K, N, out.as<TO>(), stream());
            else
              cuda::skinny_gemm<TT, TO>(x.as<TT>(), wc, w.scale, bp, T, K, N, out.as<TO>(), stream());
          };
          if (out.dtype == DType::F32)
            run(static_cast<float*>(nullptr));
          else
            run(static_cast<TT*>(nullptr));
        }
      });
      return;
    }
    if (fp8_gemm(T, x, w, out.dtype, bias != nullptr, 0.f, out.data, bias ? bias->data : nullptr)) return;
    const Tensor wd = dequantized(w);
    const cuda::PdlHold hold;  // (the kernels below request their weights early: not before the expansion is done)
    return linear(x, wd, bias, out);
  }
  LLMSERVE_CHECK(w.dtype == x.dtype, "cuda backend: linear operands must have one type");
  const bool few = skinny_few(T, {&x, &w});
  if (T <= 4 && !few && (!bias || bias->dtype == DType::F32)) {
    // A few tokens (decode): weight-streaming GEMV at the memory bandwidth.
    dispatch(x.dtype, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      const float* bp = bias ? bias->as<float>() : nullptr;
      if (out.dtype == DType::F32) {
        if constexpr (!std::is_same_v<TT, float>) {
          cuda::gemv<TT, float>(x.as<TT>(), w.as<TT>(), bp, T, K, N, out.as<float>(), stream());
          return;
        }
      }
      cuda::gemv<TT, TT>(x.as<TT>(), w.as<TT>(), bp, T, K, N, out.as<TT>(), stream());
    });
    return;
  }
  if ((skinny(T, {&x, &w}) || few) && (!bias || bias->dtype == DType::F32)) {
    dispatch(x.dtype, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      if constexpr (!std::is_same_v<TT, float>) {
        const float* bp = bias ? bias->as<float>() : nullptr;
        if (out.dtype == DType::F32)
          cuda::skinny_gemm<TT, float>(x.as<TT>(), w.as<TT>(), bp, T, K, N, out.as<float>(), stream());
        else
          cuda::skinny_gemm<TT, TT>(x.as<TT>(), w.as<TT>(), bp, T, K, N, out.as<TT>(), stream());
      }
    });
    return;
  }
  run_gemm(gemm_for(N, T, K, x.dtype, out.dtype, bias != nullptr), w, x.data, bias ? bias->data : nullptr, 0.f,
           out.data);
}

int64_t CudaBackend::few_token_boundary(int64_t boundary, int64_t weights, int64_t big_boundary) {
  return weights >= kSkinnyBigWeights ? std::min(boundary, big_boundary) : boundary;
}

bool CudaBackend::skinny_fp8(int64_t T, const Tensor& x, std::initializer_list<const Tensor*> weights) const {
  if (!skinny_on_ || (x.dtype != DType::BF16 && x.dtype != DType::F16) || reinterpret_cast<uintptr_t>(x.data) % 16 != 0 ||
      !cuda::skinny_gemm_supports(T, cols_of(x), {}))
    return false;
  int64_t n = 0;
  for (const Tensor* w : weights) {
    if (w->dtype != DType::F8E4M3 || !w->scale || reinterpret_cast<uintptr_t>(w->data) % 16 != 0) return false;
    n += w->numel();
  }
  // One big FP8 matrix from skinny_fp8_big_min_tokens_; FP8 gate/up (two matrices) keeps the general
  // boundary: at 2 tokens the two-token GEMV streams the 7B shape's pair at 2,789 GB/s against the skinny
  // kernel's 2,492, where its down projection runs at 1,321 against 2,574 (H200, kernel_bench
  // --few-tokens, thirty-seventh session).
  const int64_t big = weights.size() == 1 ? skinny_fp8_big_min_tokens_ : skinny_fp8_min_tokens_;
  return T >= few_token_boundary(skinny_fp8_min_tokens_, n, big);
}

bool CudaBackend::fp8_gemm_takes(int64_t T, int64_t K, int64_t N, bool f32_bias) const {
  // cuBLASLt's FP8 GEMMs add a bias of the 16-bit types only (a float32 one is refused, or read as
  // bfloat16: H200, CUDA 13.0): a float32 bias's GEMM (q/k/v with biases) expands the matrix instead.
  return fp8_gemm_on_ && !f32_bias && T > cuda::kSkinnyMaxTokens && K % 16 == 0 && N % 16 == 0 && dtype_ != DType::F32;
}

bool CudaBackend::fp8_gemm(int64_t T, const Tensor& x, const Tensor& w, DType out, bool bias, float beta, void* y,
                           const void* bias_data) {
  const int64_t K = cols_of(x), N = rows_of(w);
  if (!fp8_gemm_takes(T, K, N, bias && out == DType::F32) || w.dtype != DType::F8E4M3 || !w.scale || x.dtype == DType::F32)
    return false;
  const GemmKey key{N, 0, K, static_cast<int>(DType::F8E4M3), static_cast<int>(out), bias};
  if (fp8_gemm_refused_.count(key)) return false;
  Gemm* g = nullptr;
  try {
    g = &gemm_for(N, T, K, DType::F8E4M3, out, bias);
  } catch (const Error& e) {  // (a type combination cuBLASLt has no FP8 kernel for: the expansion instead)
    log_warn("FP8 GEMM ", N, "x", K, " into ", dtype_name(out), bias ? " with a bias" : "", " not available (", e.what(),
             "); expanding the matrix instead");
    fp8_gemm_refused_.insert(key);
    return false;
  }
  // The activations quantized per token (a power-of-two scale each, as the weights' rows): codes, then scales.
  const size_t codes = static_cast<size_t>(T * K), at = (codes + 15) / 16 * 16;
  Tensor xq = empty({static_cast<int64_t>(at + 4 * static_cast<size_t>(T))}, DType::F8E4M3);
  auto* xc = static_cast<__nv_fp8_e4m3*>(xq.data);
  auto* xs = reinterpret_cast<float*>(static_cast<char*>(xq.data) + at);
  dispatch(x.dtype, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    cuda::fp8_quantize_rows<TT>(x.as<TT>(), T, K, xc, xs, stream());
  });
  run_gemm(*g, w, xc, bias_data, beta, y, xs);
  ++fp8_gemms_;
  return true;
}

bool CudaBackend::skinny_norm_inside(const Tensor& x, DType wt) const {
  const bool wanted = skinny_norm_forced_.value_or(cols_of(x) >= kSkinnyNormMinCols);
  return wanted && cuda::skinny_norm_fits(rows_of(x), cols_of(x), dtype_size(wt)) &&
         reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
}

bool CudaBackend::skinny_few(int64_t T, std::initializer_list<const Tensor*> operands) const {
  const Tensor& x = **operands.begin();
  if (!skinny_on_ || T > 4 || !cuda::skinny_gemm_supports(T, cols_of(x), {})) return false;
  int64_t weights = 0;
  for (const Tensor* t : operands) {
    if (t->dtype != x.dtype || (x.dtype != DType::BF16 && x.dtype != DType::F16) || reinterpret_cast<uintptr_t>(t->data) % 16 != 0)
      return false;
    if (t != &x) weights += t->numel();
  }
  return T >= few_token_boundary(skinny_min_tokens_, weights, skinny_big_min_tokens_);
}

bool CudaBackend::skinny(int64_t T, std::initializer_list<const Tensor*> operands) const {
  const Tensor& x = **operands.begin();
  if (!skinny_on_ || !cuda::skinny_gemm_fits(T, cols_of(x), {})) return false;
  int64_t weights = 0;
  for (const Tensor* t : operands) {
    if ((t->dtype != DType::BF16 && t->dtype != DType::F16) || reinterpret_cast<uintptr_t>(t->data) % 16 != 0) return false;
    if (t != &x) weights += t->numel();
  }
  return weights <= cuda::kSkinnyMaxWeights;
}

void CudaBackend::run_gemm(Gemm& g, const Tensor& weight, const void* x, const void* bias, float beta, void* out,
                           const float* x_scale) {
  const void* w = gemm_weight(weight);
  if (bias) lt(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "bias pointer");
  if (weight.dtype == DType::F8E4M3) {
    LLMSERVE_CHECK(weight.scale && x_scale, "cuda backend: an FP8 GEMM without its scales");
    const void* sa = weight.scale;
    const void* sb = x_scale;
    lt(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa), "a scale pointer");
    lt(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb), "b scale pointer");
  }
  const float alpha = 1.f;
  g.bucket->betas |= beta != 0.f ? 2u : 1u;
  lt(cublasLtMatmul(lt_, g.op, &alpha, w, g.a, x, g.b, &beta, out, g.c, out, g.c, &g.algo, workspace_, workspace_bytes_,
                    stream()),
     "matmul");
}

int64_t CudaBackend::prepare_gemms() {
  // Each weight shape (m, k, types, bias) with the largest bucket seen and the betas it ran with.
  std::map<std::tuple<int64_t, int64_t, int, int, bool>, std::pair<int64_t, unsigned>> shapes;
  for (const auto& [key, a] : gemm_algos_) {
    const auto& [m, n, k, in, out, bias] = key;
    auto& [top, betas] = shapes[{m, k, in, out, bias}];
    top = std::max(top, n);
    betas |= a.betas;
  }
  const bool exact = gemm_exact_;
  gemm_exact_ = false;
  int64_t runs = 0;
  for (const auto& [shape, seen] : shapes) {
    const auto& [top, betas] = seen;
    const auto& [m, k, in, out, bias] = shape;
    const DType ti = static_cast<DType>(in), to = static_cast<DType>(out);
    // Zeroed scratch operands of the largest count (their values do not matter, NaNs are kept out).
    Tensor w = empty({m, k}, ti), x = empty({top, k}, ti), y = empty({top, m}, to), b = empty({m}, to);
    Tensor ws = empty({m}, DType::F32), xs = empty({top}, DType::F32);  // (FP8 GEMMs' scales)
    for (Tensor* t : {&w, &x, &y, &b, &ws, &xs}) ck(cudaMemsetAsync(t->data, 0, t->bytes(), stream()), "scratch");
    if (ti == DType::F8E4M3) w.scale = ws.as<float>();
    for (int64_t n = 5; n <= top; n = n < kGemmExactUpTo ? n + 1 : gemm_token_bucket(n + 1))
      for (const float beta : {0.f, 1.f}) {  // (y stays zero: 0 . 0 + beta . 0)
        if (!(betas & (beta != 0.f ? 2u : 1u))) continue;
        run_gemm(gemm_for(m, n, k, ti, to, bias), w, x.data, bias ? b.data : nullptr, beta, y.data,
                 ti == DType::F8E4M3 ? xs.as<float>() : nullptr);
        ++runs;
      }
  }
  gemm_exact_ = exact;
  synchronize();
  return runs;
}

void CudaBackend::rope(Tensor& q, Tensor& k, const Tensor& inv_freq, int64_t D) {
  dispatch(q.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::rope<T>(q.as<T>(), k.as<T>(), positions_.ptr, inv_freq.as<float>(), rows_of(q), cols_of(q) / D, cols_of(k) / D, D,
                  stream());
  });
}

void CudaBackend::kv_write(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache) {
  if (k_cache.dtype == DType::F8E4M3) {  // (kv_cache_dtype fp8: float32 keys and values to codes)
    LLMSERVE_CHECK(k.dtype == DType::F32 && v.dtype == DType::F32 && v_cache.dtype == DType::F8E4M3,
                   "cuda backend: an FP8 KV cache takes float32 keys and values");
    auto* kc = static_cast<__nv_fp8_e4m3*>(k_cache.data);
    auto* vc = static_cast<__nv_fp8_e4m3*>(v_cache.data);
    return cuda::kv_write<float>(k.as<float>(), v.as<float>(), slots_.ptr, rows_of(k), k_cache.dim(2), k_cache.dim(3), kc,
                                 vc, stream());
  }
  dispatch2(k.dtype, k_cache.dtype, [&](auto* ti, auto* tc) {
    using TI = std::remove_pointer_t<decltype(ti)>;
    using T = std::remove_pointer_t<decltype(tc)>;
    if constexpr (std::is_same_v<TI, T> || std::is_same_v<TI, float>) {
      cuda::kv_write<TI, T>(k.as<TI>(), v.as<TI>(), slots_.ptr, rows_of(k), k_cache.dim(2), k_cache.dim(3), k_cache.as<T>(),
                            v_cache.as<T>(), stream());
    }
  });
}

void CudaBackend::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t D, int64_t block_size,
                            float scale, Tensor& out, int64_t window) {
  // The tensor-core prefill kernel over `count` of the step's tiles from `first` (caches of `blocks`
  // blocks, read through `tables`).
  auto flash = [&](const auto* qp, const auto* kc, const auto* vc, auto* op, const int32_t* tables, int64_t first,
                   int64_t count, int64_t blocks) {
    cuda::flash_prefill(qp, kc, vc, tables, max_blocks_, token_seq_.ptr, positions_.ptr, tiles_.ptr + first, count,
                        rows_of(q), cols_of(q) / D, k_cache.dim(2), D, block_size, blocks, max_len_, scale, window, op,
                        stream());
  };
  // The split-KV kernel over the rows from `first`, `n` of them, whose contexts are at most `len` long
  // and runs of new tokens at most `fresh`.
  auto paged = [&](const auto* qp, const auto* kc, const auto* vc, auto* op, int64_t first, int64_t n, int64_t len,
                   int64_t fresh) {
    const int64_t row = cols_of(q);
    cuda::paged_attention(qp + first * row, kc, vc, tables_.ptr, max_blocks_, token_seq_.ptr + first, positions_.ptr + first,
                          n, row / D, k_cache.dim(2), D, block_size, scale, window, len, fresh, attention_scratch_,
                          op + first * row, stream());
  };
  // A prefill step with a 16-bit output: the tensor-core prefill kernel over its tiles from `first` (those
  // before it ran already), then the split-KV kernel over its decode rows; else the split-KV kernel.
  auto run = [&](const auto* qp, const auto* kc, const auto* vc, auto* op, int64_t first = 0) {
    using TO = std::remove_pointer_t<decltype(op)>;
    if constexpr (!std::is_same_v<TO, float>) {
      if (flash_ && cuda::flash_prefill_supported(D)) {
        if (first < num_tiles_) flash(qp, kc, vc, op, tables_.ptr, first, num_tiles_ - first, k_cache.dim(0));
        for (const auto& [first_row, rows] : decode_runs_) paged(qp, kc, vc, op, first_row, rows, decode_len_, decode_new_);
        return;
      }
    }
    paged(qp, kc, vc, op, 0, rows_of(q), max_len_, max_new_);
  };
  if (k_cache.dtype == DType::F8E4M3) {
    // kv_cache_dtype fp8: the kernels widen the codes to the output's type (decode: each lane its MMA
    // fragments, in registers; prefill: the blocks of the sequences that fit reserve_kv_widening's buffers
    // widened once there, read by the kernel as a 16-bit cache; the other sequences' tiles by the
    // warp-specialized kernel, whose producer warps widen them tile by tile).
    LLMSERVE_CHECK(q.dtype == DType::F32 && v_cache.dtype == DType::F8E4M3,
                   "cuda backend: attention over an FP8 KV cache takes float32 queries");
    const auto* kc = static_cast<const __nv_fp8_e4m3*>(k_cache.data);
    const auto* vc = static_cast<const __nv_fp8_e4m3*>(v_cache.data);
    const bool widen = widen_count_ > 0 && flash_ && out.dtype == dtype_ && cuda::flash_prefill_supported(D) &&
                       block_size == widen_bs_ && k_cache.dim(1) == block_size && k_cache.dim(2) * D == widen_row_;
    dispatch(out.dtype, [&](auto* to) {
      using TO = std::remove_pointer_t<decltype(to)>;
      if constexpr (!std::is_same_v<TO, float>) {
        if (widen) {
          auto* wk = static_cast<TO*>(widen_k_);
          auto* wv = static_cast<TO*>(widen_v_);
          cuda::widen_kv_blocks<TO>(kc, vc, widen_blocks_.ptr, widen_count_, block_size * widen_row_, wk, wv, stream());
          flash(q.as<float>(), static_cast<const TO*>(wk), static_cast<const TO*>(wv), out.as<TO>(), widen_tables_.ptr, 0,
                widen_tiles_, widen_cap_);
          return run(q.as<float>(), kc, vc, out.as<TO>(), widen_tiles_);
        }
      }
      run(q.as<float>(), kc, vc, out.as<TO>());
    });
    kv_widenings_ += widen;
    return;
  }
  LLMSERVE_CHECK(out.dtype == k_cache.dtype, "cuda backend: attention output must have the cache's type");
  dispatch2(q.dtype, k_cache.dtype, [&](auto* ti, auto* tc) {
    using TI = std::remove_pointer_t<decltype(ti)>;
    using T = std::remove_pointer_t<decltype(tc)>;
    if constexpr (std::is_same_v<TI, T> || std::is_same_v<TI, float>)
      run(q.as<TI>(), k_cache.as<const T>(), v_cache.as<const T>(), out.as<T>());
  });
}

void CudaBackend::silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  dispatch2(gate.dtype, out.dtype, [&](auto* ti, auto* to) {
    using TI = std::remove_pointer_t<decltype(ti)>;
    using T = std::remove_pointer_t<decltype(to)>;
    if constexpr (std::is_same_v<TI, T> || std::is_same_v<TI, float>) {
      cuda::silu_mul<TI, T>(gate.as<TI>(), up.as<TI>(), gate.numel(), out.as<T>(), stream());
    }
  });
}

bool CudaBackend::moe_in_graphs(int64_t tokens, int64_t E, int k, int64_t H, int64_t M) const {
  static const bool host = std::getenv("LLMSERVE_MOE_HOST") != nullptr;  // (read once: moe() asks every layer)
  return cuda::moe_on_device_fits(tokens, E, k, H, M) && !host;
}

void CudaBackend::moe(const Tensor& h, const MoeWeights& w, Tensor& out, bool accumulate) {
  const int64_t T = rows_of(h), H = cols_of(h), E = w.router.dim(0), M = w.down.dim(1);
  const bool types = w.gate_up.dtype == h.dtype && w.down.dtype == h.dtype && h.dtype != DType::F8E4M3 && out.dtype == DType::F32;
  const size_t elem = dtype_size(h.dtype);
  auto at16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };  // (the kernels' vector loads)
  const bool aligned = at16(h.data) && at16(w.gate_up.data) && at16(w.down.data);
  if (!types || !aligned || !moe_in_graphs(T, E, w.top_k, H, M)) {
    LLMSERVE_CHECK(!capturing_, "cuda backend: a mixture-of-experts step this size cannot be recorded in a graph");
    return Backend::moe(h, w, out, accumulate);
  }
  Tensor logits = empty({T, E}, DType::F32);
  linear(h, w.router, nullptr, logits);
  // (scratch as float32 elements: the kernels lay out their int32 and typed parts in it)
  Tensor scratch = empty({static_cast<int64_t>((cuda::moe_scratch_bytes(T, E, w.top_k, H, M, elem) + 3) / 4)}, DType::F32);
  dispatch(h.dtype, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    cuda::moe<TT>(h.as<TT>(), logits.as<float>(), w.gate_up.as<TT>(), w.down.as<TT>(), T, E, w.top_k, w.renormalize, H, M,
                  scratch.data, out.as<float>(), accumulate, stream());
  });
}

void CudaBackend::lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) {
  const int64_t T = rows_of(in), K = cols_of(in);
  LLMSERVE_CHECK(T == num_tokens_ && a.dtype == in.dtype && a.shape.size() == 3 && a.dim(2) == K && t.dtype == DType::F32 &&
                     rows_of(t) == T && cols_of(t) == a.dim(1),
                 "cuda backend: lora_shrink shapes or types");
  dispatch(in.dtype, [&](auto* ti) {
    using T_ = std::remove_pointer_t<decltype(ti)>;
    cuda::lora_shrink<T_>(in.as<T_>(), a.as<T_>(), lora_rows_.ptr, T, K, a.dim(1), t.as<float>(), stream());
  });
}

bool CudaBackend::lora_shrink_norm_inside() {
  static const bool inside = env_switch("LLMSERVE_LORA_SHRINK_NORM").value_or(true);
  return inside;
}

void CudaBackend::lora_shrink_norm(const Tensor& x, const InputNorm& norm, const Tensor& a, Tensor& t, bool write_h) {
  // Up to 16 rows: the norm inside the shrink (each block normalizes the rows it reads), for the fused ops
  // of 1-2 tokens, which normalize for themselves too, and (write_h) the stacked GEMMs of 3-16 tokens,
  // which read the h the shrink writes. More rows: rmsnorm into norm.h, then the shrink.
  const int64_t T = rows_of(x), K = cols_of(x);
  if (!lora_shrink_norm_inside() || T > 16 || x.dtype != DType::F32 || norm.w.dtype != a.dtype || norm.w.numel() != K ||
      (write_h && (norm.h.dtype != a.dtype || rows_of(norm.h) != T || cols_of(norm.h) != K || a.dim(1) == 0))) {
    rmsnorm(x, norm.w, norm.eps, norm.h);
    return lora_shrink(norm.h, a, t);
  }
  LLMSERVE_CHECK(T == num_tokens_ && a.shape.size() == 3 && a.dim(2) == K && t.dtype == DType::F32 && rows_of(t) == T &&
                     cols_of(t) == a.dim(1),
                 "cuda backend: lora_shrink_norm shapes or types");
  dispatch(a.dtype, [&](auto* ti) {
    using T_ = std::remove_pointer_t<decltype(ti)>;
    cuda::lora_shrink_norm<T_>(x.as<float>(), norm.w.as<T_>(), norm.eps, a.as<T_>(), lora_rows_.ptr, T, K, a.dim(1),
                               t.as<float>(), write_h ? norm.h.as<T_>() : nullptr, stream());
  });
}

void CudaBackend::lora_expand(const Tensor& t, const LoraExpand* outs, int n) {
  static_assert(Backend::kMaxLoraExpands == cuda::kMaxLoraOuts, "one expand launch takes every output of a call");
  LLMSERVE_CHECK(n >= 1 && n <= cuda::kMaxLoraOuts, "cuda backend: lora_expand shapes or types");
  ExpandTarget e[cuda::kMaxLoraOuts];
  for (int i = 0; i < n; ++i) {
    const Tensor& out = *outs[i].out;
    LLMSERVE_CHECK(out.dtype == DType::F32 && rows_of(out) == num_tokens_ && cols_of(out) == outs[i].bt->dim(2),
                   "cuda backend: lora_expand shapes or types");
    e[i] = {outs[i].bt, outs[i].col, out.as<float>(), cols_of(out)};
  }
  expand_targets(t, e, n);
}

void CudaBackend::lora_expand_columns(const LoraDelta& d, Tensor& rows, const std::array<int64_t, 3>& at) {
  ExpandTarget e[cuda::kMaxLoraOuts];
  int n = 0;
  for (int j = 0; j < 3; ++j) {
    if (!d.bt[j]) continue;
    LLMSERVE_CHECK(rows.dtype == DType::F32 && rows_of(rows) == num_tokens_ && at[j] >= 0 && at[j] + d.bt[j]->dim(2) <= cols_of(rows),
                   "cuda backend: lora_expand_columns shapes or types");
    e[n++] = {d.bt[j], d.col[j], rows.as<float>() + at[j], cols_of(rows)};
  }
  if (n > 0) expand_targets(*d.t, e, n);
}

void CudaBackend::expand_targets(const Tensor& t, const ExpandTarget* e, int n) {
  LLMSERVE_CHECK(n >= 1 && n <= cuda::kMaxLoraOuts && t.dtype == DType::F32 && rows_of(t) == num_tokens_,
                 "cuda backend: lora_expand shapes or types");
  const DType bt_type = e[0].bt->dtype;
  const int64_t R = e[0].bt->dim(1);
  for (int i = 0; i < n; ++i) {
    const Tensor& bt = *e[i].bt;
    LLMSERVE_CHECK(bt.shape.size() == 3 && bt.dtype == bt_type && bt.dim(1) == R && e[i].col >= 0 && e[i].col + R <= cols_of(t),
                   "cuda backend: lora_expand shapes or types");
  }
  dispatch(bt_type, [&](auto* tb) {
    using T_ = std::remove_pointer_t<decltype(tb)>;
    cuda::LoraOut<T_> o[cuda::kMaxLoraOuts];
    for (int i = 0; i < n; ++i) o[i] = {e[i].bt->as<T_>(), e[i].col, e[i].bt->dim(2), e[i].out, e[i].ld};
    cuda::lora_expand<T_>(t.as<float>(), cols_of(t), lora_rows_.ptr, num_tokens_, R, o, n, stream());
  });
}

void CudaBackend::linear_residual(const Tensor& a, const Tensor& w, Tensor& y, Tensor& x, const LoraDelta* lora) {
  const int64_t T = rows_of(a), K = cols_of(a), N = rows_of(w);
  LLMSERVE_CHECK(cols_of(w) == K && (w.dtype == a.dtype || w.dtype == DType::F8E4M3) && x.dtype == DType::F32 &&
                     rows_of(x) == T && cols_of(x) == N,
                 "cuda backend: linear_residual shapes or types");
  if (T == 0 || N == 0) return;
  if (lora) {
    // 1-2 tokens on the GEMV: the shrink, then the update added in the GEMV's epilogue. Otherwise the
    // projection with its residual add, then the shrink and the expand into the residual stream.
    cuda::LoraFused f;
    if (T <= 2 && w.dtype == a.dtype && !skinny_few(T, {&a, &w}) && fusable_lora(*lora, T, a.dtype, {N, 0, 0}, lora_rows_.ptr, &f)) {
      lora_shrink(a, *lora->a, *lora->t);
      return dispatch(a.dtype, [&](auto* tag) {
        using TT = std::remove_pointer_t<decltype(tag)>;
        cuda::gemv_lora_residual<TT>(a.as<TT>(), w.as<TT>(), T, K, N, x.as<float>(), f, stream());
      });
    }
    linear_residual(a, w, y, x);
    return lora_update(a, *lora, {&x, nullptr, nullptr});
  }
  if (w.dtype == DType::F8E4M3) {
    // The skinny GEMM over the codes (from skinny_fp8_min_tokens_ to 16 tokens), or below that the GEMV;
    // both adding into x.
    const bool tiles = skinny_fp8(T, a, {&w}), gemv = !tiles && T <= 4 && a.dtype != DType::F32;
    if (gemv || tiles) {
      dispatch(a.dtype, [&](auto* tag) {
        using TT = std::remove_pointer_t<decltype(tag)>;
        if constexpr (!std::is_same_v<TT, float>) {
          const auto* wc = static_cast<const __nv_fp8_e4m3*>(w.data);
          if (gemv)
            cuda::gemv<TT, float>(a.as<TT>(), wc, w.scale, nullptr, T, K, N, x.as<float>(), stream(), true);
          else
            cuda::skinny_gemm<TT, float>(a.as<TT>(), wc, w.scale, nullptr, T, K, N, x.as<float>(), stream(), true);
        }
      });
      return;
    }
    if (fp8_gemm(T, a, w, DType::F32, false, 1.f, x.data, nullptr)) return;
    const Tensor wd = dequantized(w);
    const cuda::PdlHold hold;  // (as in linear)
    return linear_residual(a, wd, x, x);
  }
  const bool few = skinny_few(T, {&a, &w});
  if (T <= 4 && !few) {  // weight-streaming GEMV adding into x
    dispatch(a.dtype, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      cuda::gemv<TT, float>(a.as<TT>(), w.as<TT>(), nullptr, T, K, N, x.as<float>(), stream(), true);
    });
    return;
  }
  if (skinny(T, {&a, &w}) || few) {
    dispatch(a.dtype, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      if constexpr (!std::is_same_v<TT, float>)
        cuda::skinny_gemm<TT, float>(a.as<TT>(), w.as<TT>(), nullptr, T, K, N, x.as<float>(), stream(), true);
    });
    return;
  }
  // x = 1 * (w . a) + 1 * x: cuBLASLt reads C and writes D, the same matrix here.
  run_gemm(gemm_for(N, T, K, a.dtype, DType::F32, false), w, a.data, nullptr, 1.f, x.data);
}

void CudaBackend::norm_qkv_rope_kv_write(const Tensor& x, const InputNorm& norm, const Tensor& wq, const Tensor* bq,
                                         Tensor& q, const Tensor& wk, const Tensor* bk, Tensor& k, const Tensor& wv,
                                         const Tensor* bv, Tensor& v, const HeadNorm* head_norm, const Tensor& inv_freq,
                                         int64_t D, Tensor& k_cache, Tensor& v_cache, const LoraDelta* lora) {
  // A few tokens (decode): the norm, the projections, RoPE and the cache write in one weight-streaming
  // launch (with Qwen3's per-head norms too).
  const int64_t T = rows_of(x), K = cols_of(x);
  const DType wt = norm.w.dtype;  // (the activations'; the matrices' too, or FP8 codes)
  const bool fp8 = wq.dtype == DType::F8E4M3;
  // The caches in the activation type, or E4M3 codes (kv_cache_dtype fp8), which the fused kernels
  // write too.
  const bool fp8_cache = k_cache.dtype == DType::F8E4M3;
  const bool cache_ok = (k_cache.dtype == wt || fp8_cache) && v_cache.dtype == k_cache.dtype;
  // Stacked q/k/v (with all three biases or none) on the skinny launch, on tensor cores: FP8 codes from
  // skinny_fp8_min_tokens_ to 16 tokens, 16-bit weights from skinny_min_tokens_ to 4 (skinny_few; from 5
  // below); the norm inside it where skinny_norm_inside, else rmsnorm first.
  const bool biases = bq && bk && bv, none = !bq && !bk && !bv;
  const bool stacked_all = stacked_rows({&wq, &wk, &wv});
  const Tensor stacked = stacked_all ? stacked_view({&wq, &wk, &wv}) : Tensor{};
  const bool norm_inside = skinny_norm_inside(x, wt);
  const bool tile_shape =
      stacked_all && (none || (biases && stacked_rows({bq, bk, bv}) && bq->dtype == DType::F32)) && x.dtype == DType::F32 &&
      q.dtype == DType::F32 && cache_ok && D % 16 == 0 && k_cache.dim(3) == D && rows_of(wk) == k_cache.dim(2) * D &&
      rows_of(wv) == rows_of(wk) && rows_of(wq) % D == 0 && cols_of(q) == rows_of(wq);
  const bool tiles = tile_shape && (fp8 ? skinny_fp8(T, norm.h, {&stacked})
                                        : norm.h.dtype == wt && skinny_few(T, {&norm.h, &stacked}));
  bool fused = !tiles && T >= 1 && T <= 4 && x.dtype == DType::F32 && !(fp8 && wt == DType::F32) && q.dtype == DType::F32 &&
               cache_ok && D % 2 == 0 && rows_of(wq) == cols_of(q) &&
               k_cache.dim(3) == D && rows_of(wk) == k_cache.dim(2) * D && rows_of(wv) == rows_of(wk) &&
               cuda::gemv_norm_fits(T, K, dtype_size(wt));
  for (const Tensor* b : {bq, bk, bv}) fused = fused && (!b || b->dtype == DType::F32);
  for (const Tensor* w : {&wq, &wk, &wv}) fused = fused && w->dtype == wq.dtype && (fp8 || w->dtype == wt) && cols_of(*w) == K;
  const cuda::RopeCacheWrite target{q.as<float>(), k_cache.data, v_cache.data, positions_.ptr, slots_.ptr,
                                    inv_freq.as<float>(), rows_of(wq) / D, rows_of(wk) / D, D, fp8_cache};
  // One GEMM over the stacked q/k/v rows (all three biases stacked too, or none) into rows of (q | k | v),
  // `d`'s LoRA update (shrink of the normalized input, expand) added into its columns, then the head norms
  // where given, RoPE and the cache write in one launch.
  const int64_t nq = rows_of(wq), nkv = rows_of(wk), N = nq + 2 * nkv;
  const bool rows_ok = stacked_all && (none || (biases && stacked_rows({bq, bk, bv}))) && q.dtype == DType::F32 &&
                       cols_of(q) == nq && rows_of(wv) == nkv && k_cache.dtype == v_cache.dtype && D % 2 == 0 &&
                       k_cache.dim(3) == D && nkv == k_cache.dim(2) * D && nq % D == 0 &&
                       (!head_norm || (head_norm->q_w.numel() == D && head_norm->k_w.numel() == D &&
                                       head_norm->k_w.dtype == head_norm->q_w.dtype));
  auto rows_then_rope = [&](const LoraDelta* d) {
    if (d)
      lora_shrink_norm(x, norm, *d->a, *d->t, true);
    else
      rmsnorm(x, norm.w, norm.eps, norm.h);
    Tensor b;
    if (biases) b = stacked_view({bq, bk, bv});
    Tensor qkv = empty({T, N}, DType::F32);
    linear(norm.h, stacked, biases ? &b : nullptr, qkv);
    if (d) lora_expand_columns(*d, qkv, {0, nq, nq + nkv});
    const float* rows = qkv.as<float>();
    dispatch_cache(k_cache.dtype, [&](auto* tag) {
      using TC = std::remove_pointer_t<decltype(tag)>;
      if (!head_norm)
        return cuda::rope_kv_write_rows<TC>(rows, N, q.as<float>(), rows + nq, rows + nq + nkv, N, positions_.ptr,
                                            inv_freq.as<float>(), slots_.ptr, T, nq / D, nkv / D, D, k_cache.as<TC>(),
                                            v_cache.as<TC>(), stream());
      dispatch(head_norm->q_w.dtype, [&](auto* wtag) {
        using TW = std::remove_pointer_t<decltype(wtag)>;
        cuda::head_norm_rope_kv_write_rows<TC, TW>(rows, N, q.as<float>(), rows + nq, rows + nq + nkv, N, positions_.ptr,
                                                   inv_freq.as<float>(), slots_.ptr, T, nq / D, nkv / D, D,
                                                   head_norm->q_w.as<TW>(), head_norm->k_w.as<TW>(), head_norm->eps,
                                                   k_cache.as<TC>(), v_cache.as<TC>(), stream());
      });
    });
  };
  cuda::LoraFused lora_fused;
  if (lora) {
    // LoRA, 1-2 tokens: the shrink with the norm inside, then the fused launch below with the update added
    // before RoPE (16- or 32-bit weights, no head norms): two launches. Otherwise the stacked rows with the
    // shrink of the normalized input (which writes it for the GEMM up to 16 tokens) and the expand into
    // their columns (four launches up to 16 tokens, else five; the composition's eight), or the default's
    // composition.
    const bool fits = fused && !fp8 && !head_norm && T <= 2 &&
                      fusable_lora(*lora, T, wt, {nq, nkv, nkv}, lora_rows_.ptr, &lora_fused);
    if (!fits) {
      if (rows_ok && stacked_gemms()) return rows_then_rope(lora);
      return Backend::norm_qkv_rope_kv_write(x, norm, wq, bq, q, wk, bk, k, wv, bv, v, head_norm, inv_freq, D, k_cache,
                                             v_cache, lora);
    }
    lora_shrink_norm(x, norm, *lora->a, *lora->t);
  }
  // One token with per-head norms (Qwen3): the fused launch below normalizes each head too (clusters of
  // blocks, one a head), where the head size allows and the norms' weights are in the activation type.
  // (Qwen3-1.7B shape, H100, batch-1 TPOT 1.73 -> 1.68 ms; at 2 tokens the fused launch took 2.10 ms
  // against the three launches' 1.90, so from 2 tokens on the three launches.)
  const bool fused_head_norm = head_norm && fused && T == 1 && cuda::qkv_head_norm_fits(D) && head_norm->q_w.dtype == wt &&
                               head_norm->k_w.dtype == wt && head_norm->q_w.numel() == D && head_norm->k_w.numel() == D;
  if (head_norm && !fused_head_norm) {
    // Each query and key head normalized (Qwen3), 2 tokens and more: the norm, one GEMM over the stacked q/k/v
    // rows, then the head norms, RoPE and the cache write in one launch (three launches; the default's
    // seven).
    if (!rows_ok)
      return Backend::norm_qkv_rope_kv_write(x, norm, wq, bq, q, wk, bk, k, wv, bv, v, head_norm, inv_freq, D, k_cache, v_cache);
    return rows_then_rope(nullptr);
  }
  if (tiles) {
    if (!norm_inside) rmsnorm(x, norm.w, norm.eps, norm.h);
    Tensor b;
    if (biases) b = stacked_view({bq, bk, bv});
    dispatch(wt, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      if constexpr (!std::is_same_v<TT, float>) {
        const float* bp = biases ? b.as<float>() : nullptr;
        auto run = [&](const auto* w, const float* scale) {
          using TW = std::remove_const_t<std::remove_pointer_t<decltype(w)>>;
          if (norm_inside)
            cuda::skinny_norm_qkv_rope<TT, TW>(x.as<float>(), norm.w.as<TT>(), norm.eps, w, scale, bp, T, K, target, stream());
          else
            cuda::skinny_qkv_rope<TT, TW>(norm.h.as<TT>(), w, scale, bp, T, K, target, stream());
        };
        if (fp8)
          run(static_cast<const __nv_fp8_e4m3*>(stacked.data), stacked.scale);
        else
          run(stacked.as<TT>(), static_cast<const float*>(nullptr));
      }
    });
    return;
  }
  if (fp8 && !fused) {
    // 1-4 tokens whose rows do not fit the fused kernel's shared memory (a hidden size past 4,915 at 4
    // tokens): rmsnorm and the three GEMVs over the codes (the default's composition), not an expansion
    // every step. More than 16 tokens (or biases on some of the three only): the stacked matrix expanded
    // to 16 bits once, then as 16-bit weights (the default's three linear() calls expand one at a time
    // where the matrices are not stacked).
    if (!stacked_all || T <= 4)
      return Backend::norm_qkv_rope_kv_write(x, norm, wq, bq, q, wk, bk, k, wv, bv, v, nullptr, inv_freq, D, k_cache, v_cache);
    // Many tokens: FP8 GEMMs in the composition below (its linear() calls), or the expansion.
    if (!(fp8_gemm_takes(T, K, rows_of(stacked), !none) && wt != DType::F32)) {
      const Tensor w = dequantized(stacked);
      const cuda::PdlHold hold;  // (as in linear)
      return norm_qkv_rope_kv_write(x, norm, rows_view(w, 0, nq), bq, q, rows_view(w, nq, nkv), bk, k,
                                    rows_view(w, nq + nkv, nkv), bv, v, nullptr, inv_freq, D, k_cache, v_cache);
    }
  }
  if (!fused) {
    // More tokens: with q/k/v stacked (as the model loads them; biases all stacked too, or none), one
    // GEMM into rows of (q | k | v), then RoPE reading those rows and writing the queries out; 5-16 tokens
    // on the skinny launch that does both.
    if (!(T > 4 && stacked_gemms() && rows_ok))
      return Backend::norm_qkv_rope_kv_write(x, norm, wq, bq, q, wk, bk, k, wv, bv, v, nullptr, inv_freq, D, k_cache, v_cache);
    if (skinny(T, {&norm.h, &stacked}) && norm.h.dtype == wt && cache_ok && D % 16 == 0 &&
        (!biases || bq->dtype == DType::F32)) {
      // 5-16 tokens: the projections, RoPE and the cache write in one launch (a tile holds rotation pairs' both rows).
      rmsnorm(x, norm.w, norm.eps, norm.h);
      Tensor b;
      if (biases) b = stacked_view({bq, bk, bv});
      dispatch(wt, [&](auto* tag) {
        using TT = std::remove_pointer_t<decltype(tag)>;
        if constexpr (!std::is_same_v<TT, float>)
          cuda::skinny_qkv_rope<TT>(norm.h.as<TT>(), stacked.as<TT>(), biases ? b.as<float>() : nullptr, T, K, target, stream());
      });
      return;
    }
    return rows_then_rope(nullptr);
  }
  cuda::QkvRope a{target, {}, {}, {}};
  a.lora = lora_fused;
  if (head_norm) {
    a.q_norm = head_norm->q_w.data;
    a.k_norm = head_norm->k_w.data;
    a.head_eps = head_norm->eps;
  }
  const Tensor* ws[3] = {&wq, &wk, &wv};
  const Tensor* bs[3] = {bq, bk, bv};
  for (int j = 0; j < 3; ++j) {
    a.w[j] = ws[j]->data;
    a.bias[j] = bs[j] ? bs[j]->as<float>() : nullptr;
    a.scale[j] = ws[j]->scale;
  }
  dispatch(wt, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    if (!fp8) return cuda::gemv_qkv_rope<TT>(x.as<float>(), norm.w.as<TT>(), norm.eps, T, K, a, stream());
    if constexpr (!std::is_same_v<TT, float>)
      cuda::gemv_qkv_rope<TT, __nv_fp8_e4m3>(x.as<float>(), norm.w.as<TT>(), norm.eps, T, K, a, stream());
  });
}

void CudaBackend::norm_gate_up_silu(const Tensor& x, const InputNorm& norm, const Tensor& w_gate, const Tensor& w_up,
                                    Tensor& gate_up, Tensor& act, const LoraDelta* lora) {
  const int64_t T = rows_of(x), K = cols_of(x);
  const DType wt = norm.w.dtype;  // (the activations'; the matrices' too, or FP8 codes)
  const bool fp8 = w_gate.dtype == DType::F8E4M3;
  const bool fused = T >= 1 && T <= 4 && x.dtype == DType::F32 && (fp8 ? wt != DType::F32 : w_gate.dtype == wt) &&
                     w_up.dtype == w_gate.dtype && act.dtype == wt && cols_of(w_gate) == K && cols_of(w_up) == K &&
                     cuda::gemv_norm_fits(T, K, dtype_size(wt));
  const bool tiles = fused && rows_of(w_up) == rows_of(w_gate) &&
                     (fp8 ? skinny_fp8(T, norm.h, {&w_gate, &w_up}) : norm.h.dtype == wt && skinny_few(T, {&norm.h, &w_gate, &w_up}));
  if (lora) {
    // LoRA, 1-2 tokens: the shrink with the norm inside, then the GEMV launch with the update added before
    // SiLU (16- or 32-bit weights).
    cuda::LoraFused f;
    const bool fits = fused && !tiles && !fp8 && T <= 2 &&
                      fusable_lora(*lora, T, wt, {rows_of(w_gate), rows_of(w_up), 0}, lora_rows_.ptr, &f);
    if (!fits) {
      // Otherwise the stacked pair in one GEMM, with the shrink of the normalized input (which writes it for
      // the GEMM up to 16 tokens) and the expand into the GEMM's halves (four launches up to 16 tokens, else
      // five; the composition's seven), or the default's composition.
      if (!stacked_gate_up(x, w_gate, w_up, gate_up, act)) return Backend::norm_gate_up_silu(x, norm, w_gate, w_up, gate_up, act, lora);
      lora_shrink_norm(x, norm, *lora->a, *lora->t, true);
      return stacked_gate_up_silu(norm.h, w_gate, w_up, gate_up, act, lora);
    }
    lora_shrink_norm(x, norm, *lora->a, *lora->t);
    return dispatch(wt, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      cuda::gemv_norm_gate_up_silu<TT, TT>(x.as<float>(), norm.w.as<TT>(), norm.eps, w_gate.as<TT>(), w_up.as<TT>(), nullptr,
                                           nullptr, T, K, rows_of(w_gate), act.as<TT>(), stream(), &f);
    });
  }
  if (tiles && skinny_norm_inside(x, wt)) {
    // FP8 codes from skinny_fp8_min_tokens_ to 4 tokens, 16-bit weights from skinny_min_tokens_, rows
    // skinny_norm_inside takes: the norm, gate/up and SiLU-and-multiply in one launch on tensor cores
    // (other rows: rmsnorm, then gate_up_silu's skinny launch; more tokens: that or cuBLASLt, below).
    dispatch(wt, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      if constexpr (!std::is_same_v<TT, float>) {
        auto run = [&](const auto* wg, const auto* wu) {
          using TW = std::remove_const_t<std::remove_pointer_t<decltype(wg)>>;
          cuda::skinny_norm_gate_up_silu<TT, TW>(x.as<float>(), norm.w.as<TT>(), norm.eps, wg, wu, w_gate.scale,
                                                 w_up.scale, T, K, rows_of(w_gate), act.as<TT>(), stream());
        };
        if (fp8)
          run(static_cast<const __nv_fp8_e4m3*>(w_gate.data), static_cast<const __nv_fp8_e4m3*>(w_up.data));
        else
          run(w_gate.as<TT>(), w_up.as<TT>());
      }
    });
    return;
  }
  if (!fused || tiles) return Backend::norm_gate_up_silu(x, norm, w_gate, w_up, gate_up, act);
  dispatch(wt, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    if (!fp8)
      return cuda::gemv_norm_gate_up_silu<TT, TT>(x.as<float>(), norm.w.as<TT>(), norm.eps, w_gate.as<TT>(), w_up.as<TT>(),
                                                  nullptr, nullptr, T, K, rows_of(w_gate), act.as<TT>(), stream());
    if constexpr (!std::is_same_v<TT, float>)
      cuda::gemv_norm_gate_up_silu<TT, __nv_fp8_e4m3>(x.as<float>(), norm.w.as<TT>(), norm.eps,
                                                      static_cast<const __nv_fp8_e4m3*>(w_gate.data),
                                                      static_cast<const __nv_fp8_e4m3*>(w_up.data), w_gate.scale,
                                                      w_up.scale, T, K, rows_of(w_gate), act.as<TT>(), stream());
  });
}

bool CudaBackend::stacked_gate_up(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& gate_up,
                                  const Tensor& act) const {
  const int64_t T = rows_of(x), I = rows_of(w_gate);
  return stacked_gemms() && stacked_rows({&w_gate, &w_up}) && rows_of(w_up) == I && gate_up.dtype == DType::F32 &&
         gate_up.numel() >= 2 * T * I && rows_of(act) == T && cols_of(act) == I;
}

void CudaBackend::stacked_gate_up_silu(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act,
                                       const LoraDelta* lora) {
  // gate and up stacked (as the model loads them): one GEMM into rows of (gate | up), `lora`'s update added
  // into its halves, then SiLU-and-multiply.
  const int64_t T = rows_of(x), I = rows_of(w_gate);
  Tensor gu = gate_up;
  gu.shape = {T, 2 * I};
  linear(x, stacked_view({&w_gate, &w_up}), nullptr, gu);
  if (lora) lora_expand_columns(*lora, gu, {0, I, 0});
  dispatch(act.dtype, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    cuda::silu_mul_halves<TO>(gu.as<float>(), T, I, act.as<TO>(), stream());
  });
}

void CudaBackend::rope_kv_write(Tensor& q, Tensor& k, const Tensor& v, const Tensor& inv_freq, int64_t D, Tensor& k_cache,
                                Tensor& v_cache) {
  if (q.dtype != DType::F32 || k.dtype != DType::F32 || v.dtype != DType::F32)
    return Backend::rope_kv_write(q, k, v, inv_freq, D, k_cache, v_cache);
  dispatch_cache(k_cache.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::rope_kv_write<T>(q.as<float>(), k.as<float>(), v.as<float>(), positions_.ptr, inv_freq.as<float>(), slots_.ptr,
                           rows_of(q), cols_of(q) / D, cols_of(k) / D, D, k_cache.as<T>(), v_cache.as<T>(), stream());
  });
}

void CudaBackend::gate_up_silu(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up,
                               Tensor& act) {
  const int64_t T = rows_of(x), I = rows_of(w_gate);
  if (w_gate.dtype == DType::F8E4M3 || w_up.dtype == DType::F8E4M3) {
    // The skinny GEMM over the codes, on tensor cores (from skinny_fp8_min_tokens_ to 16 tokens), or below
    // that the GEMV over them.
    const bool shapes = x.dtype != DType::F32 && act.dtype == x.dtype && w_gate.dtype == w_up.dtype &&
                        rows_of(w_up) == I && cols_of(w_gate) == cols_of(x) && cols_of(w_up) == cols_of(x) &&
                        rows_of(act) == T && cols_of(act) == I;
    const bool tiles = shapes && skinny_fp8(T, x, {&w_gate, &w_up}), gemv = shapes && !tiles && T >= 1 && T <= 4;
    if (gemv || tiles) {
      dispatch(x.dtype, [&](auto* tag) {
        using TT = std::remove_pointer_t<decltype(tag)>;
        if constexpr (!std::is_same_v<TT, float>) {
          const auto* wg = static_cast<const __nv_fp8_e4m3*>(w_gate.data);
          const auto* wu = static_cast<const __nv_fp8_e4m3*>(w_up.data);
          if (gemv)
            cuda::gemv_gate_up_silu<TT>(x.as<TT>(), wg, wu, w_gate.scale, w_up.scale, T, cols_of(x), I, act.as<TT>(), stream());
          else
            cuda::skinny_gate_up_silu<TT>(x.as<TT>(), wg, wu, w_gate.scale, w_up.scale, T, cols_of(x), I, act.as<TT>(),
                                          stream());
        }
      });
      return;
    }
    // More tokens: the stacked pair expanded to 16 bits once (else one at a time by the default's linear()),
    // or FP8 GEMMs: the composition below, whose linear() calls run them.
    if (!(fp8_gemm_takes(T, cols_of(x), 2 * I, false) && x.dtype != DType::F32)) {
      if (!stacked_rows({&w_gate, &w_up})) return Backend::gate_up_silu(x, w_gate, w_up, gate_up, act);
      const Tensor w = dequantized(stacked_view({&w_gate, &w_up}));
      const cuda::PdlHold hold;  // (as in linear)
      return gate_up_silu(x, rows_view(w, 0, I), rows_view(w, I, rows_of(w_up)), gate_up, act);
    }
  }
  if ((skinny(T, {&x, &w_gate, &w_up}) || skinny_few(T, {&x, &w_gate, &w_up})) && act.dtype == x.dtype && w_gate.dtype == x.dtype &&
      w_up.dtype == x.dtype && cols_of(w_gate) == cols_of(x) && cols_of(w_up) == cols_of(x) && rows_of(w_up) == I &&
      rows_of(act) == T && cols_of(act) == I) {
    // A few tokens: gate, up and SiLU-and-multiply in one weight-streaming launch on tensor cores.
    dispatch(x.dtype, [&](auto* tag) {
      using TT = std::remove_pointer_t<decltype(tag)>;
      if constexpr (!std::is_same_v<TT, float>)
        cuda::skinny_gate_up_silu<TT>(x.as<TT>(), w_gate.as<TT>(), w_up.as<TT>(), T, cols_of(x), I, act.as<TT>(), stream());
    });
    return;
  }
  if (T > 4 && stacked_gate_up(x, w_gate, w_up, gate_up, act)) return stacked_gate_up_silu(x, w_gate, w_up, gate_up, act, nullptr);
  if (T < 1 || T > 4 || act.dtype != x.dtype || w_gate.dtype != x.dtype || w_up.dtype != x.dtype)
    return Backend::gate_up_silu(x, w_gate, w_up, gate_up, act);
  dispatch(x.dtype, [&](auto* tag) {
    using TT = std::remove_pointer_t<decltype(tag)>;
    cuda::gemv_gate_up_silu<TT, TT>(x.as<TT>(), w_gate.as<TT>(), w_up.as<TT>(), nullptr, nullptr, T, cols_of(x),
                                    rows_of(w_gate), act.as<TT>(), stream());
  });
}

void CudaBackend::draw_rows(Tensor& logits, int64_t L, int64_t token_offset, const std::vector<RowDraw>& rows,
                            const std::vector<LogitEdit>& edits, const RowMasks& masks, float* best, int32_t* idx, float* keep) {
  const int64_t n = static_cast<int64_t>(rows.size()), ne = static_cast<int64_t>(edits.size());
  if (n == 0) return;
  LLMSERVE_CHECK(logits.dtype == DType::F32, "draw_rows: logits must be float32");
  // The draws and edits go up while the forward pass runs: pinned staging, the copy stream, an event
  // stream() waits for. The previous call's copy is done (its results came down after its kernel, which
  // waited for that copy), so both buffers are free.
  const size_t rows_bytes = rows.size() * sizeof(RowDraw), edits_at = (rows_bytes + 15) / 16 * 16;
  const size_t edits_end = edits_at + edits.size() * sizeof(LogitEdit);
  // (the masks' rows, then their bitmaps, behind the edits)
  const size_t nm = masks.rows.size(), mrows_at = (edits_end + 15) / 16 * 16;
  const size_t mbits_at = (mrows_at + nm * sizeof(int32_t) + 15) / 16 * 16;
  LLMSERVE_CHECK(masks.bits.size() == nm * static_cast<size_t>(mask_words(L)), "draw_rows: the masks' bitmaps do not match their rows");
  const size_t bytes = nm > 0 ? mbits_at + masks.bits.size() * sizeof(uint64_t) : edits_end;
  if (bytes > draw_cap_) {
    const size_t cap = std::max<size_t>(bytes + bytes / 2, 1 << 16);
    reserve_pinned(draw_pinned_, draw_cap_, bytes, cap, "draw staging");
    draw_cap_ = 0;  // (until the device buffer is there too)
    if (draw_device_) ck(cudaFree(draw_device_), "free draw inputs");
    draw_device_ = nullptr;
    ck(cudaMalloc(&draw_device_, cap), "draw inputs allocation");
    draw_cap_ = cap;
  }
  std::memcpy(draw_pinned_, rows.data(), rows_bytes);
  if (ne > 0) std::memcpy(draw_pinned_ + edits_at, edits.data(), edits.size() * sizeof(LogitEdit));
  if (nm > 0) {
    std::memcpy(draw_pinned_ + mrows_at, masks.rows.data(), nm * sizeof(int32_t));
    std::memcpy(draw_pinned_ + mbits_at, masks.bits.data(), masks.bits.size() * sizeof(uint64_t));
  }
  ck(cudaMemcpyAsync(draw_device_, draw_pinned_, bytes, cudaMemcpyHostToDevice, copy_stream_), "upload draws");
  ck(cudaEventRecord(copied_, copy_stream_), "upload draws");
  ck(cudaStreamWaitEvent(stream(), copied_, 0), "upload draws");
  const auto* dev = static_cast<const unsigned char*>(draw_device_);
  const bool filtered = std::any_of(rows.begin(), rows.end(), [](const RowDraw& r) { return r.filtered(); });
  // Results: best, idx, then (filtered rows' processed log-probabilities) the keep thresholds in one
  // buffer, brought down in one copy.
  const bool thresholds = keep && filtered;
  const int64_t count = (thresholds ? 3 : 2) * n;
  if (static_cast<size_t>(3 * n) > drawn_cap_) {
    const size_t cap = std::max<size_t>(static_cast<size_t>(6 * n), 1024);
    ck(cudaDeviceSynchronize(), "synchronize");  // (a queued step may still fill its tokens in from the old buffer)
    reserve_pinned(drawn_pinned_, drawn_cap_, static_cast<size_t>(3 * n), cap, "draw results");
    drawn_cap_ = 0;  // (until the device buffer is there too)
    if (drawn_device_) ck(cudaFree(drawn_device_), "free draw results");
    drawn_device_ = nullptr;
    ck(cudaMalloc(&drawn_device_, cap * sizeof(float)), "draw results allocation");
    drawn_cap_ = cap;
  }
  cuda::draw_rows(logits.as<float>(), n, logits.dim(1), L, token_offset, reinterpret_cast<const RowDraw*>(dev),
                  reinterpret_cast<const LogitEdit*>(dev + edits_at), ne, filtered, drawn_device_,
                  reinterpret_cast<int32_t*>(drawn_device_ + n), stream(), thresholds ? drawn_device_ + 2 * n : nullptr,
                  reinterpret_cast<const int32_t*>(dev + mrows_at), static_cast<int64_t>(nm),
                  reinterpret_cast<const uint64_t*>(dev + mbits_at));
  drawn_rows_ = n;
  ck(cudaMemcpyAsync(drawn_pinned_, drawn_device_, count * sizeof(float), cudaMemcpyDeviceToHost, stream()), "draw results");
  ck(cudaEventRecord(results_, stream()), "draw results");
  wait_for_results();
  std::memcpy(best, drawn_pinned_, n * sizeof(float));
  std::memcpy(idx, drawn_pinned_ + n, n * sizeof(int32_t));
  if (thresholds)
    std::memcpy(keep, drawn_pinned_ + 2 * n, n * sizeof(float));
  else if (keep)
    std::fill(keep, keep + n, -std::numeric_limits<float>::infinity());
}

void CudaBackend::wait_for_results() {
  // While the device works, the hook may queue the next step behind it (asynchronous scheduling).
  bool hooked = !wait_hook_;
  for (;;) {
    const cudaError_t e = cudaEventQuery(results_);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) ck(e, "results");
    if (!hooked)
      hooked = wait_hook_();
    else
      std::this_thread::yield();
  }
}

void CudaBackend::row_logprobs(const Tensor& logits, int64_t L, int64_t token_offset, const std::vector<int32_t>& rows,
                               const std::vector<int32_t>& chosen, int K, float* stats, float* top_v, int32_t* top_i,
                               const LogprobView* views) {
  const int64_t m = static_cast<int64_t>(rows.size());
  LLMSERVE_CHECK(rows.size() == chosen.size() && K >= 0 && K <= kMaxTopLogprobs, "row_logprobs: bad arguments");
  LLMSERVE_CHECK(logits.dtype == DType::F32, "row_logprobs: logits must be float32");
  if (m == 0) return;
  // In: rows and chosen tokens (and the views); out: statistics and the top lists, one allocation each way.
  static_assert(sizeof(LogprobView) % sizeof(int32_t) == 0, "views after the rows and tokens");
  const int64_t view_words = views ? m * static_cast<int64_t>(sizeof(LogprobView) / sizeof(int32_t)) : 0;
  std::vector<int32_t> in(rows);
  in.insert(in.end(), chosen.begin(), chosen.end());
  in.resize(in.size() + static_cast<size_t>(view_words));
  if (views) std::memcpy(in.data() + 2 * m, views, static_cast<size_t>(m) * sizeof(LogprobView));
  Tensor dev_in = empty({2 * m + view_words}, DType::F32), dev_out = empty({m * (3 + 2 * K)}, DType::F32);
  copy_from_host(dev_in, 0, in.size() * sizeof(int32_t), in.data());
  auto* in_p = static_cast<const int32_t*>(dev_in.data);
  float* out_p = dev_out.as<float>();
  cuda::row_logprobs(logits.as<float>(), logits.dim(1), L, token_offset, in_p, in_p + m, m, K, out_p, out_p + 3 * m,
                     reinterpret_cast<int32_t*>(out_p + (3 + K) * m), stream(),
                     views ? reinterpret_cast<const LogprobView*>(in_p + 2 * m) : nullptr);
  const size_t count = static_cast<size_t>(m * (3 + 2 * K));
  reserve_pinned(lp_pinned_, lp_cap_, count, 2 * count, "log-probability results");
  ck(cudaMemcpyAsync(lp_pinned_, out_p, count * sizeof(float), cudaMemcpyDeviceToHost, stream()), "log-probability results");
  ck(cudaEventRecord(results_, stream()), "log-probability results");
  wait_for_results();
  std::memcpy(stats, lp_pinned_, 3 * m * sizeof(float));
  std::memcpy(top_v, lp_pinned_ + 3 * m, m * K * sizeof(float));
  std::memcpy(top_i, lp_pinned_ + (3 + K) * m, m * K * sizeof(int32_t));
}

void CudaBackend::count_at_least(const Tensor& logits, int64_t L, const std::vector<int32_t>& rows,
                                 const std::vector<float>& thresholds, int32_t* counts) {
  const int64_t m = static_cast<int64_t>(rows.size());
  LLMSERVE_CHECK(rows.size() == thresholds.size(), "count_at_least: bad arguments");
  LLMSERVE_CHECK(logits.dtype == DType::F32, "count_at_least: logits must be float32");
  if (m == 0) return;
  // In: rows then thresholds (both 4-byte words) in one copy; out: the counts.
  std::vector<float> in(static_cast<size_t>(2 * m));
  std::memcpy(in.data(), rows.data(), m * sizeof(int32_t));
  std::memcpy(in.data() + m, thresholds.data(), m * sizeof(float));
  Tensor dev_in = upload(in.data(), {2 * m}, DType::F32), dev_out = empty({m}, DType::F32);
  cuda::count_at_least(logits.as<float>(), logits.dim(1), L, static_cast<const int32_t*>(dev_in.data),
                       dev_in.as<float>() + m, m, reinterpret_cast<int32_t*>(dev_out.data), stream());
  copy_to_host(dev_out, 0, m * sizeof(int32_t), counts);
}

void CudaBackend::gather_rows(const Tensor& x, Tensor& out) {
  dispatch(x.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cuda::gather_rows<T>(x.as<T>(), logits_rows_.ptr, num_logits_, cols_of(x), out.as<T>(), stream());
  });
}

}  // namespace llmserve
