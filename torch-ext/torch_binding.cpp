// Torch binding (stable ABI): turns tensors into FwdParams and launches the registered kernel.
//
// The Python API validates every argument with user-facing messages first; the checks here are
// the invariants the kernels rely on for memory safety, so that a direct call of the op with
// bad input fails with an error instead of reading or writing out of bounds.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>

#include <cuda_runtime.h>

#include <optional>
#include <string>

#include "params.h"
#include "registration.h"
#include "registry.h"

namespace {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

void check_cuda_on(const Tensor& t, const char* name, int device) {
  STD_TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  STD_TORCH_CHECK(t.get_device() == device, name, " must be on the same device as q (cuda:",
                  device, "), got cuda:", int(t.get_device()));
}

// q/k/v/out: last dim contiguous, other strides and the base address 16-byte aligned
// (the kernels move 16-byte chunks).
void check_attn_tensor(const Tensor& t, const char* name, int device, ScalarType dtype,
                       int64_t dim) {
  check_cuda_on(t, name, device);
  STD_TORCH_CHECK(t.scalar_type() == dtype, name, " must have the dtype of q");
  STD_TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.dim());
  STD_TORCH_CHECK(t.stride(dim - 1) == 1, name, " must be contiguous in its last dimension");
  const int64_t align = 16 / int64_t(t.element_size());
  for (int64_t i = 0; i + 1 < dim; ++i)
    STD_TORCH_CHECK(t.size(i) <= 1 || t.stride(i) % align == 0, name, ": stride(", i,
                    ") must be a multiple of ", align, " elements");
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                  " must be 16-byte aligned");
}

const int* int_vector(const std::optional<Tensor>& t, const char* name, int device,
                      int64_t min_numel) {
  if (!t.has_value()) return nullptr;
  check_cuda_on(*t, name, device);
  STD_TORCH_CHECK(t->scalar_type() == ScalarType::Int, name, " must be int32");
  STD_TORCH_CHECK(t->dim() == 1 && t->is_contiguous(), name, " must be a contiguous 1-D tensor");
  STD_TORCH_CHECK(t->numel() >= min_numel, name, " must have at least ", min_numel, " entries");
  return static_cast<const int*>(t->data_ptr());
}

int num_sms(int device) {
  int count = 0;
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return count;
}

// out = attention(q, k, v); writes `out` and `softmax_lse` in place.
// Dense:  q (b, sq, h, d), k/v (b_kv, sk, h_k, d), out (b, sq, h, d), lse (b, h, sq).
// Packed: q (total_q, h, d) with cu_seqlens_q, out alike, lse (h, total_q);
//         k/v (total_k, h_k, d) with cu_seqlens_k, or dense k/v with packed q.
void fwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse,
         std::optional<Tensor> cu_seqlens_q, std::optional<Tensor> cu_seqlens_k,
         std::optional<Tensor> seqused_q, std::optional<Tensor> seqused_k,
         std::optional<Tensor> kv_batch_idx, std::optional<Tensor> leftpad_k,
         std::optional<Tensor> sinks, int64_t max_seqlen_q, double softmax_scale,
         int64_t window_left, int64_t window_right, int64_t attention_chunk, double softcap) {
  STD_TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor");
  const int device = q.get_device();
  const ScalarType dtype = q.scalar_type();
  STD_TORCH_CHECK(dtype == ScalarType::Half || dtype == ScalarType::BFloat16,
                  "q must be float16 or bfloat16");
  const bool packed_q = cu_seqlens_q.has_value();
  const bool packed_k = cu_seqlens_k.has_value();
  const int64_t q_dims = packed_q ? 3 : 4, k_dims = packed_k ? 3 : 4;
  check_attn_tensor(q, "q", device, dtype, q_dims);
  check_attn_tensor(k, "k", device, dtype, k_dims);
  check_attn_tensor(v, "v", device, dtype, k_dims);
  check_attn_tensor(out, "out", device, dtype, q_dims);

  const int64_t batch = packed_q ? cu_seqlens_q->numel() - 1 : q.size(0);
  const int64_t seqlen_q = packed_q ? max_seqlen_q : q.size(1);
  const int64_t num_heads = q.size(q_dims - 2), head_dim = q.size(q_dims - 1);
  const int64_t num_heads_k = k.size(k_dims - 2);
  const int64_t batch_k = packed_k ? 0 : k.size(0);
  const int64_t seqlen_k = packed_k ? 0 : k.size(1);
  STD_TORCH_CHECK(batch >= 0 && batch <= 65535, "batch size must be in [0, 65535]");
  STD_TORCH_CHECK(k.size(k_dims - 1) == head_dim && v.size(k_dims - 1) == head_dim,
                  "k and v must have the head dim of q");
  STD_TORCH_CHECK(num_heads_k > 0 && num_heads % num_heads_k == 0,
                  "the head count of q must be a multiple of that of k/v");
  STD_TORCH_CHECK(v.size(k_dims - 2) == num_heads_k, "v must have the head count of k");
  for (int64_t i = 0; i + 1 < k_dims; ++i)
    STD_TORCH_CHECK(v.size(i) == k.size(i), "v must have the shape of k except the last dim");
  for (int64_t i = 0; i < q_dims; ++i)
    STD_TORCH_CHECK(out.size(i) == q.size(i), "out must have the shape of q");
  if (!packed_q) STD_TORCH_CHECK(kv_batch_idx.has_value() || packed_k || batch_k == batch,
                                 "k/v batch must match q");
  STD_TORCH_CHECK(!(packed_k && kv_batch_idx.has_value()),
                  "kv_batch_idx needs batched (non-packed) k/v");

  check_cuda_on(softmax_lse, "softmax_lse", device);
  STD_TORCH_CHECK(softmax_lse.scalar_type() == ScalarType::Float && softmax_lse.is_contiguous(),
                  "softmax_lse must be a contiguous float32 tensor");
  if (packed_q) {
    STD_TORCH_CHECK(softmax_lse.dim() == 2 && softmax_lse.size(0) == num_heads &&
                        softmax_lse.size(1) == q.size(0),
                    "softmax_lse must be (num_heads, total_q)");
  } else {
    STD_TORCH_CHECK(softmax_lse.dim() == 3 && softmax_lse.size(0) == batch &&
                        softmax_lse.size(1) == num_heads && softmax_lse.size(2) == seqlen_q,
                    "softmax_lse must be (batch, num_heads, seqlen_q)");
  }
  STD_TORCH_CHECK(seqlen_q >= 0 && seqlen_q < (int64_t(1) << 31), "max_seqlen_q out of range");
  STD_TORCH_CHECK(softmax_scale > 0, "softmax_scale must be positive");
  STD_TORCH_CHECK(softcap >= 0, "softcap must be >= 0");
  STD_TORCH_CHECK(window_left >= -1 && window_right >= -1, "window sizes must be >= -1");
  STD_TORCH_CHECK(attention_chunk >= 0, "attention_chunk must be >= 0");

  sgl_fa3::FwdParams p{};
  p.q = q.data_ptr();
  p.q_batch_stride = packed_q ? 0 : q.stride(0);
  p.q_row_stride = q.stride(q_dims - 3);
  p.q_head_stride = q.stride(q_dims - 2);
  p.k = k.data_ptr();
  p.k_batch_stride = packed_k ? 0 : k.stride(0);
  p.k_row_stride = k.stride(k_dims - 3);
  p.k_head_stride = k.stride(k_dims - 2);
  p.v = v.data_ptr();
  p.v_batch_stride = packed_k ? 0 : v.stride(0);
  p.v_row_stride = v.stride(k_dims - 3);
  p.v_head_stride = v.stride(k_dims - 2);
  p.o = out.data_ptr();
  p.o_batch_stride = packed_q ? 0 : out.stride(0);
  p.o_row_stride = out.stride(q_dims - 3);
  p.o_head_stride = out.stride(q_dims - 2);
  p.lse = static_cast<float*>(softmax_lse.data_ptr());
  p.lse_batch_stride = packed_q ? 0 : num_heads * seqlen_q;
  p.lse_head_stride = packed_q ? q.size(0) : seqlen_q;

  p.cu_seqlens_q = int_vector(cu_seqlens_q, "cu_seqlens_q", device, 1);
  p.cu_seqlens_k = int_vector(cu_seqlens_k, "cu_seqlens_k", device, batch + 1);
  p.seqused_q = int_vector(seqused_q, "seqused_q", device, batch);
  p.seqused_k = int_vector(seqused_k, "seqused_k", device, batch);
  p.kv_batch_idx = int_vector(kv_batch_idx, "kv_batch_idx", device, batch);
  p.leftpad_k = int_vector(leftpad_k, "leftpad_k", device, batch);
  if (sinks.has_value()) {
    check_cuda_on(*sinks, "sinks", device);
    STD_TORCH_CHECK(sinks->scalar_type() == ScalarType::Float && sinks->dim() == 1 &&
                        sinks->numel() == num_heads && sinks->is_contiguous(),
                    "sinks must be a contiguous float32 tensor of shape (num_heads,)");
    p.sinks = static_cast<const float*>(sinks->data_ptr());
  }

  p.batch = int(batch);
  p.seqlen_q = int(seqlen_q);
  p.seqlen_k = int(seqlen_k);
  p.num_heads = int(num_heads);
  p.num_heads_k = int(num_heads_k);
  p.head_dim = int(head_dim);
  p.softmax_scale = float(softmax_scale);
  p.softcap = float(softcap);
  p.window_left = int(window_left);
  p.window_right = int(window_right);
  p.attention_chunk = int(attention_chunk);
  p.dtype = dtype == ScalarType::Half ? sgl_fa3::DType::kFloat16 : sgl_fa3::DType::kBFloat16;
  p.num_sms = num_sms(device);

  const sgl_fa3::KernelKey key{sgl_fa3::Family::kPortable, p.dtype, p.head_dim, p.head_dim};
  const sgl_fa3::FwdLauncher launch = sgl_fa3::find_fwd(key);
  STD_TORCH_CHECK(launch != nullptr, "no kernel in this build for dtype ",
                  dtype == ScalarType::Half ? "float16" : "bfloat16", " and head dim ",
                  head_dim);

  const torch::stable::accelerator::DeviceGuard guard(device);
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device, &stream) == AOTI_TORCH_SUCCESS,
                  "could not get the current CUDA stream");
  const cudaError_t err = launch(p, static_cast<cudaStream_t>(stream));
  STD_TORCH_CHECK(err == cudaSuccess, "attention kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

STABLE_TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) softmax_lse, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqused_q, Tensor? seqused_k, "
      "Tensor? kv_batch_idx, Tensor? leftpad_k, Tensor? sinks, int max_seqlen_q, "
      "float softmax_scale, int window_left, int window_right, int attention_chunk, "
      "float softcap) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL_EXPAND(TORCH_EXTENSION_NAME, CUDA, m) {
  m.impl("fwd", TORCH_BOX(&fwd));
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
