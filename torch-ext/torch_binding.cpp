// Torch binding (stable ABI): turns tensors into FwdParams / AppendParams, plans the launch and
// calls the registered kernels.
//
// The Python API validates every argument with user-facing messages first; the checks here are
// the invariants the kernels rely on for memory safety, so that a direct call of an op with bad
// input fails with an error instead of reading or writing out of bounds.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

#include "api.h"
#include "params.h"
#include "planner.h"
#include "registration.h"
#include "registry.h"

namespace {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using OptTensor = std::optional<Tensor>;

void check_cuda_on(const Tensor& t, const char* name, int device) {
  STD_TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  STD_TORCH_CHECK(t.get_device() == device, name, " must be on the same device as q (cuda:", device, "), got cuda:",
                  int(t.get_device()));
}

// Attention operands: last dim contiguous, other strides and the base address 16-byte aligned
// (the kernels move 16-byte chunks).
void check_attn_tensor(const Tensor& t, const char* name, int device, ScalarType dtype, int64_t dim) {
  check_cuda_on(t, name, device);
  STD_TORCH_CHECK(t.scalar_type() == dtype, name, " must have the dtype of q");
  STD_TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.dim());
  STD_TORCH_CHECK(t.stride(dim - 1) == 1, name, " must be contiguous in its last dimension");
  const int64_t align = 16 / int64_t(t.element_size());
  for (int64_t i = 0; i + 1 < dim; ++i)
    STD_TORCH_CHECK(t.size(i) <= 1 || t.stride(i) % align == 0, name, ": stride(", i, ") must be a multiple of ",
                    align, " elements");
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
}

const int* int_vector(const OptTensor& t, const char* name, int device, int64_t numel) {
  if (!t.has_value()) return nullptr;
  check_cuda_on(*t, name, device);
  STD_TORCH_CHECK(t->scalar_type() == ScalarType::Int, name, " must be int32");
  STD_TORCH_CHECK(t->dim() == 1 && t->is_contiguous(), name, " must be a contiguous 1-D tensor");
  STD_TORCH_CHECK(t->numel() == numel, name, " must have ", numel, " entries, got ", t->numel());
  return static_cast<const int*>(t->data_ptr());
}

const float* float_vector(const OptTensor& t, const char* name, int device, int64_t numel) {
  if (!t.has_value()) return nullptr;
  check_cuda_on(*t, name, device);
  STD_TORCH_CHECK(t->scalar_type() == ScalarType::Float && t->is_contiguous() && t->numel() == numel, name,
                  " must be a contiguous float32 tensor of ", numel, " entries");
  return static_cast<const float*>(t->data_ptr());
}

// Element strides of a (batch, rows, heads, dim) tensor, or of a packed (rows, heads, dim) one
// whose batch stride is 0 (sequences are located by their cu_seqlens offsets instead).
void row_strides(const Tensor& t, bool packed, int64_t& batch, int64_t& row, int64_t& head) {
  const int64_t dims = t.dim();
  batch = packed ? 0 : t.stride(0);
  row = t.stride(dims - 3);
  head = t.stride(dims - 2);
}

// rotary_cos / rotary_sin: contiguous fp32 (seqlen_ro, rotary_dim / 2), rotary_dim <= head_dim.
void set_rotary_tables(sgl_fa3::AppendParams& p, const Tensor& cos, const Tensor& sin, int64_t head_dim, int device,
                       bool interleaved) {
  const int64_t half = cos.size(1);
  STD_TORCH_CHECK(cos.dim() == 2 && sin.dim() == 2 && sin.size(0) == cos.size(0) && sin.size(1) == half &&
                      2 * half <= head_dim,
                  "rotary_cos/sin must be (seqlen_ro, rotary_dim / 2) with rotary_dim <= head dim");
  p.rotary_cos = float_vector(cos, "rotary_cos", device, cos.numel());
  p.rotary_sin = float_vector(sin, "rotary_sin", device, cos.numel());
  p.rotary_dim = int(2 * half);
  p.rotary_rows = int(cos.size(0));
  p.rotary_interleaved = interleaved;
}

sgl_fa3::DType dtype_code(ScalarType t) {
  STD_TORCH_CHECK(t == ScalarType::Half || t == ScalarType::BFloat16, "q must be float16 or bfloat16");
  return t == ScalarType::Half ? sgl_fa3::DType::kFloat16 : sgl_fa3::DType::kBFloat16;
}

sgl_fa3::TileShape tile_shape(const sgl_fa3::FwdKernel& kernel) {
  return {kernel.block_m, kernel.block_n, kernel.merges_splits};
}

// The key block of the portable tile a plan chose (the unit of its n_blocks_per_split).
int planned_block_n(const sgl_fa3::FwdKernels& kernels, const sgl_fa3::Plan& plan) {
  return plan.tile == sgl_fa3::TileKind::kDecode       ? kernels.decode.block_n
         : plan.tile == sgl_fa3::TileKind::kShortQuery ? kernels.short_query.block_n
                                                       : kernels.prefill.block_n;
}

// The planner's inputs with one tile for every tile kind (the Hopper family's).
sgl_fa3::PlanInputs with_tile(sgl_fa3::PlanInputs in, const sgl_fa3::FwdKernel& tile) {
  in.prefill = in.short_query = in.decode = tile_shape(tile);
  return in;
}

// Key splits of the Hopper absorbed-MLA tile, in its own key blocks (in: with_tile of that tile):
// the same planner (the planned GQA packing kept), or a precomputed plan (get_scheduler_metadata,
// counted in the portable tile's blocks) carried over at the same keys per split.
sgl_fa3::Plan hopper_split_plan(sgl_fa3::PlanInputs in, const sgl_fa3::Plan& plan, int planned_block_n,
                                int64_t n_blocks_per_split) {
  if (n_blocks_per_split <= 0) {
    in.pack_gqa = plan.pack_gqa ? 1 : 0;
    return sgl_fa3::plan_forward(in);
  }
  sgl_fa3::Plan split = plan;
  const int block_n = in.prefill.block_n;
  const int64_t keys_per_split = n_blocks_per_split * planned_block_n;
  const int n_blocks = std::max(sgl_fa3::ceil_div(in.max_seqlen_k, block_n), 1);
  split.set_precomputed_splits(sgl_fa3::split_layout(n_blocks, sgl_fa3::ceil_div(keys_per_split, block_n)),
                               in.deterministic);
  return split;
}

const sgl_fa3::FwdKernels& kernels_for(sgl_fa3::DType dtype, int64_t d, int64_t dv) {
  const sgl_fa3::FwdKernels* kernel =
      sgl_fa3::find_fwd({sgl_fa3::Family::kPortable, dtype, int(d), int(dv)});
  STD_TORCH_CHECK(kernel != nullptr, "no kernel in this build for dtype ",
                  dtype == sgl_fa3::DType::kFloat16 ? "float16" : "bfloat16", ", head dim ", d, ", v head dim ", dv);
  return *kernel;
}

// SM count and opt-in shared memory per block, read once per device (they never change).
struct DeviceLimits {
  int num_sms = 0, smem_per_block = 0, major = 0;
};
const DeviceLimits& device_limits(int device) {
  constexpr int kMaxDevices = 64;
  STD_TORCH_CHECK(device >= 0 && device < kMaxDevices, "unsupported CUDA device index ", device);
  static DeviceLimits limits[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  std::call_once(once[device], [device] {
    cudaDeviceGetAttribute(&limits[device].num_sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&limits[device].smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaDeviceGetAttribute(&limits[device].major, cudaDevAttrComputeCapabilityMajor, device);
  });
  return limits[device];
}

// Kernel family choice. SGL_FLASH_ATTN3_BACKEND=portable forces the portable family;
// =sm90 requires the Hopper family (an error where it cannot run); unset or auto picks.
enum class BackendRequest { kAuto, kPortable, kSm90 };
BackendRequest backend_request() {
  const char* env = std::getenv("SGL_FLASH_ATTN3_BACKEND");
  if (env == nullptr || std::strcmp(env, "") == 0 || std::strcmp(env, "auto") == 0) return BackendRequest::kAuto;
  if (std::strcmp(env, "portable") == 0) return BackendRequest::kPortable;
  STD_TORCH_CHECK(std::strcmp(env, "sm90") == 0, "SGL_FLASH_ATTN3_BACKEND must be auto, portable or sm90, got '",
                  env, "'");
  return BackendRequest::kSm90;
}

cudaStream_t current_stream(int device) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device, &stream) == AOTI_TORCH_SUCCESS,
                  "could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

void check_launch(cudaError_t err, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// out = attention(q, k, v); writes `out` and `softmax_lse` in place.
// Launches the forward kernel. With split partials (merge != kNone) each split writes fp32
// partials into workspace from torch's caching allocator (safe under CUDA-graph capture), merged
// by the forward's own last split CTA of each tile (kInGrid: portable decode / short-query tiles,
// one counter per tile) or by the combine kernel after the forward (kCombineKernel).
// pdl: the forward (portable family) and the combine may launch as programmatic dependents of
// the grid before each on the stream.
void launch_forward(const sgl_fa3::FwdKernel& kernel, sgl_fa3::FwdParams& p, const Tensor& like,
                    sgl_fa3::SplitMerge merge, int64_t head_dim_v, bool pdl, int device, cudaStream_t stream) {
  p.pdl = pdl;
  if (merge == sgl_fa3::SplitMerge::kNone) {
    check_launch(kernel.launch(p, stream), "attention kernel launch");
    return;
  }
  Tensor o_partial = torch::stable::new_empty(like, {p.num_splits, p.lse_rows, head_dim_v}, ScalarType::Float);
  Tensor lse_partial = torch::stable::new_empty(like, {p.num_splits, p.lse_rows}, ScalarType::Float);
  p.o_partial = static_cast<float*>(o_partial.data_ptr());
  p.lse_partial = static_cast<float*>(lse_partial.data_ptr());
  if (merge == sgl_fa3::SplitMerge::kInGrid) {
    p.split_counter_slots = sgl_fa3::PortableTiles(p, kernel.block_m).count();
    check_launch(sgl_fa3::split_counters(device, stream, p.split_counter_slots, &p.split_counters), "split counters");
  }
  check_launch(kernel.launch(p, stream), "attention kernel launch");
  if (merge == sgl_fa3::SplitMerge::kCombineKernel)
    check_launch(sgl_fa3::run_split_combine(p, stream), "split-KV combine launch");
}

// q (b, sq, h, d) | packed (total_q, h, d) with cu_seqlens_q; out like q with dv.
// k/v (b_kv, sk, h_k, d|dv) | packed (total_k, h_k, .) with cu_seqlens_k | paged
// (pages, page_size, h_k, .) with page_table (b, max_pages). lse (b, h, sq) | (h, total_q).
void fwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, OptTensor qv, OptTensor cu_seqlens_q,
         OptTensor cu_seqlens_k, OptTensor seqused_q, OptTensor seqused_k, OptTensor kv_batch_idx,
         OptTensor leftpad_k, OptTensor cu_seqlens_k_new, int64_t seqlen_k_new, OptTensor page_table,
         OptTensor sinks, int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, int64_t window_left,
         int64_t window_right, int64_t attention_chunk, double softcap, int64_t num_splits, int64_t pack_gqa,
         int64_t n_blocks_per_split, bool deterministic, int64_t sm_margin) {
  STD_TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor");
  const int device = q.get_device();
  const ScalarType dtype = q.scalar_type();
  const sgl_fa3::DType code = dtype_code(dtype);
  // With a page table, cu_seqlens_k only gives lengths: k/v are the (pages, page_size, ...) pool.
  const bool paged = page_table.has_value();
  const bool packed_q = cu_seqlens_q.has_value(), packed_k = cu_seqlens_k.has_value() && !paged;
  const int64_t q_dims = packed_q ? 3 : 4, k_dims = packed_k ? 3 : 4;
  check_attn_tensor(q, "q", device, dtype, q_dims);
  check_attn_tensor(k, "k", device, dtype, k_dims);
  check_attn_tensor(v, "v", device, dtype, k_dims);
  check_attn_tensor(out, "out", device, dtype, q_dims);

  const int64_t batch = packed_q ? cu_seqlens_q->numel() - 1 : q.size(0);
  const int64_t seqlen_q = packed_q ? max_seqlen_q : q.size(1);
  const int64_t num_heads = q.size(q_dims - 2), head_dim = q.size(q_dims - 1);
  const int64_t num_heads_k = k.size(k_dims - 2), head_dim_v = v.size(k_dims - 1);
  STD_TORCH_CHECK(batch >= 0 && batch <= 65535, "batch size must be in [0, 65535]");
  STD_TORCH_CHECK(k.size(k_dims - 1) == head_dim, "k must have the head dim of q");
  STD_TORCH_CHECK(num_heads_k > 0 && num_heads % num_heads_k == 0,
                  "the head count of q must be a multiple of that of k/v");
  for (int64_t i = 0; i + 1 < k_dims; ++i)
    STD_TORCH_CHECK(v.size(i) == k.size(i), "v must have the shape of k except the last dim");
  for (int64_t i = 0; i + 1 < q_dims; ++i) STD_TORCH_CHECK(out.size(i) == q.size(i), "out must have the shape of q");
  STD_TORCH_CHECK(out.size(q_dims - 1) == head_dim_v, "out must have the v head dim as its last dim");
  if (!packed_k && !paged && !kv_batch_idx.has_value())
    STD_TORCH_CHECK(k.size(0) == batch, "k/v batch must match q");
  STD_TORCH_CHECK(!(packed_k && kv_batch_idx.has_value()), "kv_batch_idx needs batched (non-packed) k/v");
  STD_TORCH_CHECK(!paged || seqused_k.has_value() || cu_seqlens_k.has_value(),
                  "paged k/v needs seqused_k or cu_seqlens_k for the lengths");
  STD_TORCH_CHECK(!(paged && (kv_batch_idx.has_value() || leftpad_k.has_value())),
                  "paged k/v cannot be combined with kv_batch_idx or leftpad_k");
  if (qv.has_value()) {
    check_attn_tensor(*qv, "qv", device, dtype, q_dims);
    for (int64_t i = 0; i + 1 < q_dims; ++i) STD_TORCH_CHECK(qv->size(i) == q.size(i), "qv must match q");
    STD_TORCH_CHECK(qv->size(q_dims - 1) == head_dim_v, "qv must have the v head dim");
    // Only the absorbed-MLA tiles read qv; elsewhere it would be dropped.
    STD_TORCH_CHECK(head_dim <= 64 && head_dim_v >= 256,
                    "qv (absorbed MLA) needs head dim <= 64 and v head dim >= 256, got ", head_dim, " and ", head_dim_v);
  }

  check_cuda_on(softmax_lse, "softmax_lse", device);
  STD_TORCH_CHECK(softmax_lse.scalar_type() == ScalarType::Float && softmax_lse.is_contiguous(),
                  "softmax_lse must be a contiguous float32 tensor");
  if (packed_q) {
    STD_TORCH_CHECK(softmax_lse.dim() == 2 && softmax_lse.size(0) == num_heads && softmax_lse.size(1) == q.size(0),
                    "softmax_lse must be (num_heads, total_q)");
  } else {
    STD_TORCH_CHECK(softmax_lse.dim() == 3 && softmax_lse.size(0) == batch && softmax_lse.size(1) == num_heads &&
                        softmax_lse.size(2) == seqlen_q,
                    "softmax_lse must be (batch, num_heads, seqlen_q)");
  }
  STD_TORCH_CHECK(seqlen_q >= 0 && seqlen_q < (int64_t(1) << 31), "max_seqlen_q out of range");
  STD_TORCH_CHECK(softmax_scale > 0, "softmax_scale must be positive");
  STD_TORCH_CHECK(softcap >= 0, "softcap must be >= 0");
  STD_TORCH_CHECK(window_left >= -1 && window_right >= -1, "window sizes must be >= -1");
  STD_TORCH_CHECK(attention_chunk >= 0, "attention_chunk must be >= 0");
  STD_TORCH_CHECK(num_splits >= 0 && num_splits <= sgl_fa3::kMaxSplits, "num_splits must be in [0, ",
                  sgl_fa3::kMaxSplits, "], got ", num_splits);
  STD_TORCH_CHECK(sm_margin >= 0, "sm_margin must be >= 0");

  sgl_fa3::FwdParams p{};
  p.q = q.data_ptr();
  row_strides(q, packed_q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  if (qv.has_value()) {
    p.qv = qv->data_ptr();
    row_strides(*qv, packed_q, p.qv_batch_stride, p.qv_row_stride, p.qv_head_stride);
  }
  p.k = k.data_ptr();
  row_strides(k, packed_k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  p.v = v.data_ptr();
  row_strides(v, packed_k, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  p.o = out.data_ptr();
  row_strides(out, packed_q, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = static_cast<float*>(softmax_lse.data_ptr());
  p.lse_batch_stride = packed_q ? 0 : num_heads * seqlen_q;
  p.lse_head_stride = packed_q ? q.size(0) : seqlen_q;
  p.lse_rows = softmax_lse.numel();

  p.cu_seqlens_q = int_vector(cu_seqlens_q, "cu_seqlens_q", device, batch + 1);
  p.cu_seqlens_k = int_vector(cu_seqlens_k, "cu_seqlens_k", device, batch + 1);
  p.seqused_q = int_vector(seqused_q, "seqused_q", device, batch);
  p.seqused_k = int_vector(seqused_k, "seqused_k", device, batch);
  p.kv_batch_idx = int_vector(kv_batch_idx, "kv_batch_idx", device, batch);
  p.leftpad_k = int_vector(leftpad_k, "leftpad_k", device, batch);
  p.cu_seqlens_k_new = int_vector(cu_seqlens_k_new, "cu_seqlens_k_new", device, batch + 1);
  STD_TORCH_CHECK(seqlen_k_new >= 0, "seqlen_k_new must be >= 0");
  p.seqlen_k_new = cu_seqlens_k_new.has_value() ? 0 : int(seqlen_k_new);
  p.sinks = float_vector(sinks, "sinks", device, num_heads);
  if (paged) {
    const Tensor& pt = *page_table;
    check_cuda_on(pt, "page_table", device);
    STD_TORCH_CHECK(pt.scalar_type() == ScalarType::Int && pt.dim() == 2 && pt.size(0) == batch && pt.stride(1) == 1,
                    "page_table must be int32 (batch, max_pages) with a contiguous last dim");
    p.page_table = static_cast<const int*>(pt.data_ptr());
    p.page_table_batch_stride = pt.stride(0);
    p.page_size = int(k.size(1));
    STD_TORCH_CHECK(p.page_size > 0, "page size must be positive");
  }

  p.q_tensor_rows = int(q.size(packed_q ? 0 : 1));
  p.q_tensor_batch = packed_q ? 1 : int(q.size(0));
  p.k_tensor_rows = int(k.size(packed_k ? 0 : 1));
  p.k_tensor_batch = packed_k ? 1 : int(k.size(0));
  p.batch = int(batch);
  p.seqlen_q = int(seqlen_q);
  p.seqlen_k = packed_k || paged ? 0 : int(k.size(1));
  p.num_heads = int(num_heads);
  p.num_heads_k = int(num_heads_k);
  p.head_dim = int(head_dim);
  p.head_dim_v = int(head_dim_v);
  p.softmax_scale = float(softmax_scale);
  p.softcap = float(softcap);
  p.window_left = int(window_left);
  p.window_right = int(window_right);
  p.attention_chunk = int(attention_chunk);
  p.dtype = code;

  const sgl_fa3::FwdKernels& kernels = kernels_for(code, head_dim, head_dim_v);
  // Upper bound of any row's key count (with ragged appends seqlen_k_new is the packed total).
  const int64_t keys_bound =
      (paged ? page_table->size(1) * p.page_size : packed_k ? max_seqlen_k : k.size(1)) + seqlen_k_new;
  const sgl_fa3::PlanInputs plan_inputs{
      int(batch), int(seqlen_q), int(std::min<int64_t>(keys_bound, INT32_MAX)), int(num_heads), int(num_heads_k),
      tile_shape(kernels.prefill), tile_shape(kernels.short_query), tile_shape(kernels.decode),
      device_limits(device).num_sms, int(num_splits), int(pack_gqa), deterministic, paged};
  sgl_fa3::Plan plan = sgl_fa3::plan_forward(plan_inputs);
  if (n_blocks_per_split > 0) {  // a precomputed plan (get_scheduler_metadata)
    STD_TORCH_CHECK(num_splits >= 1, "a precomputed plan needs num_splits >= 1");
    plan.set_precomputed_splits({int(n_blocks_per_split), int(num_splits)}, deterministic);
  }
  // The Hopper family runs prefill tiles without split-KV over dense, packed or paged k/v
  // (check_attn_tensor's alignment makes every tensor TMA-addressable; paged rows are
  // gathered), with or without GQA packing (the planner's choice), and absorbed MLA with qv on
  // its own tile, which also splits the keys. Decode and GQA-packed short queries (memory-bound:
  // the portable few-row tiles read each K/V block once per KV head) and explicit splits of the
  // other tiles stay portable.
  const bool few_rows = plan.tile == sgl_fa3::TileKind::kDecode ||
                        (plan.tile == sgl_fa3::TileKind::kShortQuery && plan.pack_gqa);
  const BackendRequest request = backend_request();
  const sgl_fa3::FwdKernels* sm90 =
      device_limits(device).major == 9 ? sgl_fa3::find_fwd({sgl_fa3::Family::kSm90, code, int(head_dim), int(head_dim_v)})
                                       : nullptr;
  const char* sm90_blocker = sm90 == nullptr                              ? "no Hopper kernel for this GPU / head dims"
                             : head_dim_v > head_dim && !qv.has_value() ? "v head dim > head dim without qv"
                             : few_rows                                 ? "a decode-sized query (few rows per KV head)"
                             : num_splits > 1 && !qv.has_value()        ? "split-KV (num_splits > 1) without qv"
                                                                        : nullptr;
  STD_TORCH_CHECK(request != BackendRequest::kSm90 || sm90_blocker == nullptr,
                  "SGL_FLASH_ATTN3_BACKEND=sm90 cannot run this call: ", sm90_blocker);
  if (request != BackendRequest::kPortable && sm90_blocker == nullptr) {
    const sgl_fa3::PlanInputs hopper_inputs = with_tile(plan_inputs, sm90->prefill);
    const sgl_fa3::Plan split =
        qv.has_value() ? hopper_split_plan(hopper_inputs, plan, planned_block_n(kernels, plan), n_blocks_per_split)
                       : sgl_fa3::Plan{1, 0, plan.pack_gqa, plan.tile, false};
    p.pack_gqa = plan.pack_gqa;
    p.num_splits = split.num_splits;
    p.n_blocks_per_split = split.n_blocks_per_split;
    p.num_sms = device_limits(device).num_sms;
    p.sm_margin = int(std::min<int64_t>(sm_margin, INT32_MAX));
    const torch::stable::accelerator::DeviceGuard guard(device);
    const cudaStream_t stream = current_stream(device);
    // The persistent grid's tile counter, zeroed on the stream (graph-capturable).
    Tensor counter = torch::stable::new_empty(q, {1}, ScalarType::Int);
    p.tile_counter = static_cast<int*>(counter.data_ptr());
    check_launch(cudaMemsetAsync(p.tile_counter, 0, sizeof(int), stream), "tile counter reset");
    // The persistent grid does not trigger its dependents early: no programmatic launch.
    launch_forward(sm90->prefill, p, q, sgl_fa3::split_merge(hopper_inputs, split), head_dim_v, false, device,
                   stream);
    return;
  }
  const sgl_fa3::FwdKernel& kernel = plan.tile == sgl_fa3::TileKind::kDecode       ? kernels.decode
                                     : plan.tile == sgl_fa3::TileKind::kShortQuery ? kernels.short_query
                                                                                   : kernels.prefill;
  const int smem_limit = device_limits(device).smem_per_block;
  STD_TORCH_CHECK(kernel.smem_bytes <= smem_limit, "head dim ", head_dim, " / v head dim ", head_dim_v, " needs ",
                  kernel.smem_bytes / 1024, " KB of shared memory per block; this GPU allows ", smem_limit / 1024,
                  " KB");
  p.pack_gqa = plan.pack_gqa;
  p.num_splits = plan.num_splits;
  p.n_blocks_per_split = plan.n_blocks_per_split;

  const torch::stable::accelerator::DeviceGuard guard(device);
  // Programmatic dependent launch where it was tested (Hopper); later GPUs launch plainly.
  launch_forward(kernel, p, q, sgl_fa3::split_merge(plan_inputs, plan), head_dim_v, device_limits(device).major == 9,
                 device, current_stream(device));
}

// Appends k_new/v_new to the cache at slot cache_seqlens[b] (+ page table / cache rows),
// rotating the keys when rotary_cos is given.
void append_kv(Tensor k_cache, Tensor v_cache, Tensor k_new, Tensor v_new, Tensor cache_seqlens,
               OptTensor kv_batch_idx, OptTensor cu_seqlens_k_new, OptTensor page_table, OptTensor rotary_cos,
               OptTensor rotary_sin, OptTensor rotary_seqlens, bool rotary_interleaved) {
  STD_TORCH_CHECK(k_cache.is_cuda(), "k_cache must be a CUDA tensor");
  const int device = k_cache.get_device();
  const ScalarType dtype = k_cache.scalar_type();
  const bool packed = cu_seqlens_k_new.has_value();
  check_attn_tensor(k_cache, "k_cache", device, dtype, 4);
  check_attn_tensor(v_cache, "v_cache", device, dtype, 4);
  check_attn_tensor(k_new, "k", device, dtype, packed ? 3 : 4);
  check_attn_tensor(v_new, "v", device, dtype, packed ? 3 : 4);
  const int64_t batch = cache_seqlens.numel();
  STD_TORCH_CHECK(batch <= 65535, "batch size must be <= 65535");
  const int64_t h_k = k_cache.size(2), d = k_cache.size(3), dv = v_cache.size(3);
  STD_TORCH_CHECK(k_new.size(-2) == h_k && v_new.size(-2) == h_k && k_new.size(-1) == d && v_new.size(-1) == dv,
                  "k/v must match the cache's heads and head dims");
  STD_TORCH_CHECK(packed || (k_new.size(0) == batch && v_new.size(0) == batch && v_new.size(1) == k_new.size(1)),
                  "k/v must be (batch, seqlen_new, heads_k, dim)");

  sgl_fa3::AppendParams p{};
  p.k_new = k_new.data_ptr();
  row_strides(k_new, packed, p.k_new_batch_stride, p.k_new_row_stride, p.k_new_head_stride);
  p.v_new = v_new.data_ptr();
  row_strides(v_new, packed, p.v_new_batch_stride, p.v_new_row_stride, p.v_new_head_stride);
  p.k_cache = k_cache.data_ptr();
  row_strides(k_cache, false, p.k_cache_batch_stride, p.k_cache_row_stride, p.k_cache_head_stride);
  p.v_cache = v_cache.data_ptr();
  row_strides(v_cache, false, p.v_cache_batch_stride, p.v_cache_row_stride, p.v_cache_head_stride);
  p.cache_seqlens = int_vector(cache_seqlens, "cache_seqlens", device, batch);
  p.kv_batch_idx = int_vector(kv_batch_idx, "cache_batch_idx", device, batch);
  p.cu_seqlens_k_new = int_vector(cu_seqlens_k_new, "cu_seqlens_k_new", device, batch + 1);
  // Ragged: one CTA row per packed token bounds every row's count without reading the offsets.
  p.seqlen_k_new = int(packed ? k_new.size(0) : k_new.size(1));
  if (page_table.has_value()) {
    check_cuda_on(*page_table, "page_table", device);
    STD_TORCH_CHECK(page_table->scalar_type() == ScalarType::Int && page_table->dim() == 2 &&
                        page_table->size(0) == batch && page_table->stride(1) == 1,
                    "page_table must be int32 (batch, max_pages) with a contiguous last dim");
    p.page_table = static_cast<const int*>(page_table->data_ptr());
    p.page_table_batch_stride = page_table->stride(0);
    p.page_size = int(k_cache.size(1));
  }
  p.cache_rows = int(k_cache.size(0));
  p.cache_slots = int(page_table.has_value() ? page_table->size(1) * k_cache.size(1) : k_cache.size(1));
  if (rotary_cos.has_value()) {
    STD_TORCH_CHECK(rotary_sin.has_value(), "rotary_sin is required with rotary_cos");
    set_rotary_tables(p, *rotary_cos, *rotary_sin, d, device, rotary_interleaved);
    p.rotary_seqlens = int_vector(rotary_seqlens, "rotary_seqlens", device, batch);
  }
  p.batch = int(batch);
  p.num_heads_k = int(h_k);
  p.head_dim = int(d);
  p.head_dim_v = int(dv);
  p.dtype = dtype_code(dtype);
  const torch::stable::accelerator::DeviceGuard guard(device);
  check_launch(sgl_fa3::run_append_kv(p, current_stream(device)), "KV append launch");
}

// q_rot = rotary(q) at position offset + i (per_row) or offset, offset = rotary_seqlens[b] or
// cache_seqlens[b]. q (b, sq, h, d) or packed (total_q, h, d) with cu_seqlens_q.
void rotary_q(Tensor q, Tensor q_rot, Tensor cache_seqlens, OptTensor cu_seqlens_q, int64_t max_seqlen_q,
              Tensor rotary_cos, Tensor rotary_sin, OptTensor rotary_seqlens, bool rotary_interleaved, bool per_row) {
  STD_TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor");
  const int device = q.get_device();
  const bool packed = cu_seqlens_q.has_value();
  const int64_t dims = packed ? 3 : 4;
  check_attn_tensor(q, "q", device, q.scalar_type(), dims);
  check_attn_tensor(q_rot, "q_rot", device, q.scalar_type(), dims);
  for (int64_t i = 0; i < dims; ++i) STD_TORCH_CHECK(q_rot.size(i) == q.size(i), "q_rot must have the shape of q");
  const int64_t batch = cache_seqlens.numel();
  STD_TORCH_CHECK(batch <= 65535, "batch size must be <= 65535");
  STD_TORCH_CHECK(packed || q.size(0) == batch, "q batch must match cache_seqlens");
  sgl_fa3::AppendParams p{};
  p.q = q.data_ptr();
  row_strides(q, packed, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  p.q_rot = q_rot.data_ptr();
  row_strides(q_rot, packed, p.q_rot_batch_stride, p.q_rot_row_stride, p.q_rot_head_stride);
  p.cu_seqlens_q = int_vector(cu_seqlens_q, "cu_seqlens_q", device, batch + 1);
  p.seqlen_q = int(packed ? max_seqlen_q : q.size(1));
  p.cache_seqlens = int_vector(cache_seqlens, "cache_seqlens", device, batch);
  set_rotary_tables(p, rotary_cos, rotary_sin, q.size(dims - 1), device, rotary_interleaved);
  p.rotary_seqlens = int_vector(rotary_seqlens, "rotary_seqlens", device, batch);
  p.rotary_q_per_row = per_row;
  p.batch = int(batch);
  p.num_heads = int(q.size(dims - 2));
  p.head_dim = int(q.size(dims - 1));
  p.dtype = dtype_code(q.scalar_type());
  const torch::stable::accelerator::DeviceGuard guard(device);
  check_launch(sgl_fa3::run_append_kv(p, current_stream(device)), "rotary launch");
}

// Fills plan (CPU int32, 4 entries) with [num_splits, n_blocks_per_split, pack_gqa, use_combine]
// for the given problem (paged: k/v through a page table) on the given CUDA device.
void plan(Tensor out, int64_t batch, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t num_heads,
          int64_t num_heads_k, int64_t head_dim, int64_t head_dim_v, int64_t dtype, int64_t num_splits,
          int64_t pack_gqa, bool deterministic, bool paged, int64_t device) {
  STD_TORCH_CHECK(out.is_cpu() && out.scalar_type() == ScalarType::Int && out.numel() == 4 && out.is_contiguous(),
                  "plan output must be a contiguous CPU int32 tensor of 4 entries");
  STD_TORCH_CHECK(num_heads_k > 0 && num_heads % num_heads_k == 0, "num_heads must be a multiple of num_heads_k");
  const sgl_fa3::FwdKernels& kernels = kernels_for(sgl_fa3::DType(dtype), head_dim, head_dim_v);
  const sgl_fa3::Plan result = sgl_fa3::plan_forward(
      {int(batch), int(max_seqlen_q), int(max_seqlen_k), int(num_heads), int(num_heads_k), tile_shape(kernels.prefill),
       tile_shape(kernels.short_query), tile_shape(kernels.decode), device_limits(int(device)).num_sms,
       int(num_splits), int(pack_gqa), deterministic, paged});
  int* values = static_cast<int*>(out.data_ptr());
  values[0] = result.num_splits;
  values[1] = result.n_blocks_per_split;
  values[2] = result.pack_gqa;
  values[3] = result.use_combine;
}

}  // namespace

STABLE_TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) softmax_lse, Tensor? qv, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqused_q, Tensor? seqused_k, Tensor? kv_batch_idx, "
      "Tensor? leftpad_k, Tensor? cu_seqlens_k_new, int seqlen_k_new, Tensor? page_table, Tensor? sinks, "
      "int max_seqlen_q, int max_seqlen_k, float softmax_scale, int window_left, int window_right, "
      "int attention_chunk, float softcap, int num_splits, int pack_gqa, int n_blocks_per_split, "
      "bool deterministic, int sm_margin) -> ()");
  m.def(
      "append_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor cache_seqlens, "
      "Tensor? cache_batch_idx, Tensor? cu_seqlens_k_new, Tensor? page_table, Tensor? rotary_cos, "
      "Tensor? rotary_sin, Tensor? rotary_seqlens, bool rotary_interleaved) -> ()");
  m.def(
      "rotary_q(Tensor q, Tensor(a!) q_rot, Tensor cache_seqlens, Tensor? cu_seqlens_q, int max_seqlen_q, "
      "Tensor rotary_cos, Tensor rotary_sin, Tensor? rotary_seqlens, bool rotary_interleaved, bool per_row) -> ()");
  m.def(
      "plan(Tensor(a!) out, int batch, int max_seqlen_q, int max_seqlen_k, int num_heads, int num_heads_k, "
      "int head_dim, int head_dim_v, int dtype, int num_splits, int pack_gqa, bool deterministic, bool paged, "
      "int device) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL_EXPAND(TORCH_EXTENSION_NAME, CUDA, m) {
  m.impl("fwd", TORCH_BOX(&fwd));
  m.impl("append_kv", TORCH_BOX(&append_kv));
  m.impl("rotary_q", TORCH_BOX(&rotary_q));
}

STABLE_TORCH_LIBRARY_IMPL_EXPAND(TORCH_EXTENSION_NAME, CPU, m) {
  m.impl("plan", TORCH_BOX(&plan));
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
