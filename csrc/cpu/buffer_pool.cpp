#include "buffer_pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace fused_rnn {

namespace {
constexpr size_t kAlignment = 64;  // c10's CPU allocator's
}

BufferPool& BufferPool::get() {
  static BufferPool* pool = new BufferPool();
  return *pool;
}

c10::DataPtr BufferPool::allocate(size_t nbytes) {
  const size_t bytes = (std::max<size_t>(nbytes, 1) + kGranule - 1) / kGranule * kGranule;
  void* data = nullptr;
  size_t held = bytes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it != free_.end() && it->first <= 2 * bytes) {
      held = it->first;
      data = it->second;
      cached_ -= held;
      free_.erase(it);
    }
  }
  if (!data) {
    if (posix_memalign(&data, kAlignment, bytes) != 0) {
      release_cached();  // the cache's blocks may be what is missing
      TORCH_CHECK(posix_memalign(&data, kAlignment, bytes) == 0,
                  "fused_rnn: out of memory allocating ", bytes, " bytes");
    }
  }
  return {data, new Block{data, held}, &BufferPool::give_back, c10::Device(c10::kCPU)};
}

void BufferPool::give_back(void* block) {
  auto* b = static_cast<Block*>(block);
  BufferPool& pool = get();
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(pool.mutex_);
    if (pool.cached_ + b->bytes <= kMaxCachedBytes) {
      // First among the blocks of its size: the next request takes the most recently freed,
      // whose lines may still be in cache.
      pool.free_.emplace_hint(pool.free_.lower_bound(b->bytes), b->bytes, b->data);
      pool.cached_ += b->bytes;
      cached = true;
    }
  }
  if (!cached) std::free(b->data);
  delete b;
}

void BufferPool::copy_data(void* dest, const void* src, size_t count) const {
  std::memcpy(dest, src, count);
}

size_t BufferPool::release_cached() {
  std::multimap<size_t, void*> blocks;
  size_t released;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    blocks.swap(free_);
    released = cached_;
    cached_ = 0;
  }
  for (auto& [bytes, data] : blocks) std::free(data);
  return released;
}

size_t BufferPool::cached_bytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  return cached_;
}

at::Tensor pooled_empty(c10::IntArrayRef sizes, const c10::TensorOptions& options) {
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < BufferPool::kMinBytes) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &BufferPool::get(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), c10::nullopt);
}

namespace {
int64_t empty_cache() { return int64_t(BufferPool::get().release_cached()); }
int64_t cache_bytes() { return int64_t(BufferPool::get().cached_bytes()); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def("empty_cache() -> int", &empty_cache);
  m.def("cache_bytes() -> int", &cache_bytes);
}

}  // namespace fused_rnn
