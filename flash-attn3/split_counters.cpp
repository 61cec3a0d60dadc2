// Split counters of the portable forward's in-grid merge (see api.h).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "api.h"

namespace sgl_fa3 {
namespace {

// Eager calls: capture 0. Captured calls: the capture sequence's id (unique in the process).
struct StreamKey {
  int device;
  cudaStream_t stream;
  bool captured;
  unsigned long long capture;
  bool operator<(const StreamKey& o) const {
    return std::tie(device, stream, captured, capture) < std::tie(o.device, o.stream, o.captured, o.capture);
  }
};

struct Counters {
  unsigned* current = nullptr;
  int64_t slots = 0;
};

constexpr int64_t kMinSlots = 1024;

// n zeroed counters, ready before this returns. The zeroing runs on a private stream and is waited
// for here, outside any capture: a memset on the caller's stream would become a node of a graph
// being captured, paid on every replay. Allocation, stream creation and the wait are not stream
// work of a capture, but a global-mode capture on this thread would reject them as potentially
// unsafe calls: they run in relaxed mode.
cudaError_t new_zeroed_buffer(int device, int64_t n, unsigned** buffer) {
  static std::map<int, cudaStream_t> zeroing_streams;  // guarded by the caller's lock
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaError_t err = cudaThreadExchangeStreamCaptureMode(&mode);
  if (err != cudaSuccess) return err;
  cudaStream_t& zeroing = zeroing_streams[device];
  void* ptr = nullptr;
  if (zeroing == nullptr) err = cudaStreamCreateWithFlags(&zeroing, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaMalloc(&ptr, size_t(n) * sizeof(unsigned));
  if (err == cudaSuccess) err = cudaMemsetAsync(ptr, 0, size_t(n) * sizeof(unsigned), zeroing);
  if (err == cudaSuccess) err = cudaStreamSynchronize(zeroing);
  if (err != cudaSuccess && ptr != nullptr) cudaFree(ptr);
  const cudaError_t restored = cudaThreadExchangeStreamCaptureMode(&mode);
  if (err != cudaSuccess) return err;
  *buffer = static_cast<unsigned*>(ptr);
  return restored;
}

}  // namespace

cudaError_t split_counters(int device, cudaStream_t stream, int64_t slots, unsigned** counters) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long capture = 0;
  cudaError_t err = cudaStreamGetCaptureInfo(stream, &status, &capture);
  if (err != cudaSuccess) return err;
  const bool captured = status != cudaStreamCaptureStatusNone;
  const StreamKey key{device, stream, captured, captured ? capture : 0};

  static std::mutex mutex;
  static std::map<StreamKey, Counters> buffers;
  const std::lock_guard<std::mutex> lock(mutex);
  Counters& entry = buffers[key];
  if (entry.slots < slots) {
    // A larger buffer; the old one stays allocated, since calls queued on the stream before this
    // one (or captured earlier into the same graph) may still use it.
    const int64_t n = std::max({slots, 2 * entry.slots, kMinSlots});
    unsigned* buffer = nullptr;
    err = new_zeroed_buffer(device, n, &buffer);
    if (err != cudaSuccess) return err;
    entry.current = buffer;
    entry.slots = n;
  }
  *counters = entry.current;
  return cudaSuccess;
}

}  // namespace sgl_fa3
