// A cache of the large CPU buffers that every layer call allocates and frees: its output, the
// training workspace, the input gradient, the packed weights. From glibc each such buffer is
// fresh memory once it is larger than malloc's trim/mmap thresholds: every page of it faults
// (and the kernel zeroes it) on first touch, on every call. On the MNIST-rows model that was
// ~900 page faults per training step and 15-25% of its time (with glibc's trimming turned off
// by MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ the step ran 7.7-9.0 ms instead of 9.6-9.9).
//
// Blocks of at least kMinBytes, rounded up to kGranule, go back to the pool when their last
// tensor dies, and the next request that fits (a block at most twice its size) reuses one. At
// most kMaxCachedBytes wait in the pool; beyond that a freed block goes back to the system.
// fused_rnn.empty_cache() (the op fused_rnn::empty_cache) releases them all.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/TensorOptions.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

namespace fused_rnn {

class BufferPool final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = 64 * 1024;
  static constexpr size_t kGranule = 64 * 1024;
  static constexpr size_t kMaxCachedBytes = size_t(512) << 20;

  // The process-wide pool (never destroyed: tensors may die during interpreter shutdown).
  static BufferPool& get();

  c10::DataPtr allocate(size_t nbytes) override;
  void copy_data(void* dest, const void* src, size_t count) const override;
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  // Frees every cached block; returns how many bytes that released.
  size_t release_cached();
  size_t cached_bytes();

 private:
  struct Block {
    void* data;
    size_t bytes;
  };
  static void give_back(void* block);

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // bytes -> block, waiting for reuse
  size_t cached_ = 0;
};

// at::empty on the pool for CPU tensors of kMinBytes and more, at::empty otherwise.
at::Tensor pooled_empty(c10::IntArrayRef sizes, const c10::TensorOptions& options);

}  // namespace fused_rnn
