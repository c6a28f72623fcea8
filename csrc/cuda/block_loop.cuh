// The whole time loop of a small layer in one kernel: each thread block runs sequence.h's
// forward_loop / backward_loop on its own rows of the batch, step after step, with the
// recurrent weight in shared memory where it fits (else read through L1/L2). Rows never meet
// inside a step (every row's recurrence reads only its own state), so the blocks need no
// grid-wide synchronisation; a step's products and gate math are separated by __syncthreads.
//
// Why: stepping from the host costs two or three launches per step (~5 us each of host time),
// so a 500-step IMDB layer took 8 ms where its arithmetic is microseconds; cuDNN's persistent
// kernels do the same. The input projection before the loop and the weight gradients after it
// stay one cuBLAS GEMM each (sequence.h's layer_forward / layer_backward).
//
// Variable lengths are in the kernel: at step t a block works on its rows that are still
// active (the schedule's batch_sizes), and stops touching a row once its sequence has ended.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../sequence.h"

namespace fused_rnn {

constexpr int kBlockLoopMaxThreads = 512;

// The backend that forward_loop / backward_loop run on inside the kernel: every call is made by
// all threads of the block, shares the work out over them and ends with __syncthreads(), so the
// next call sees its results.
struct BlockBackend {
  static constexpr bool kStepProjection = false;

  // Row-major C [m, n] = A B + beta C. Consecutive threads take consecutive columns (B's rows
  // are read contiguously, A's element is broadcast). With fewer outputs than threads, the k
  // range is split over groups of threads and the groups' sums are added through shared memory.
  template <class scalar_t>
  static __device__ void gemm(int64_t m, int64_t n, int64_t K, const scalar_t* A, int64_t lda,
                              const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C,
                              int64_t ldc) {
    using acc_t = at::opmath_type<scalar_t>;
    __shared__ acc_t partial[kBlockLoopMaxThreads];
    const int64_t items = m * n;
    const int64_t padded = (items + 31) / 32 * 32;
    const acc_t b = static_cast<acc_t>(beta);
    auto dot = [&](int64_t r, int64_t c, int64_t k0, int64_t k1) {
      const scalar_t* a = A + r * lda;
      const scalar_t* w = B + c;
      acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t k = k0;
      for (; k + 3 < k1; k += 4) {
        s0 += static_cast<acc_t>(a[k]) * static_cast<acc_t>(w[k * ldb]);
        s1 += static_cast<acc_t>(a[k + 1]) * static_cast<acc_t>(w[(k + 1) * ldb]);
        s2 += static_cast<acc_t>(a[k + 2]) * static_cast<acc_t>(w[(k + 2) * ldb]);
        s3 += static_cast<acc_t>(a[k + 3]) * static_cast<acc_t>(w[(k + 3) * ldb]);
      }
      for (; k < k1; ++k) s0 += static_cast<acc_t>(a[k]) * static_cast<acc_t>(w[k * ldb]);
      return (s0 + s1) + (s2 + s3);
    };
    auto store = [&](int64_t r, int64_t c, acc_t v) {
      scalar_t* out = C + r * ldc + c;
      *out = static_cast<scalar_t>(b == acc_t(0) ? v : v + b * static_cast<acc_t>(*out));
    };
    const int64_t groups = padded >= blockDim.x ? 1 : blockDim.x / padded;
    if (groups == 1) {
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        store(i / n, i % n, dot(i / n, i % n, 0, K));
      }
    } else {
      const int64_t g = threadIdx.x / padded, i = threadIdx.x % padded;
      const int64_t per = (K + groups - 1) / groups;
      acc_t v = 0;
      if (g < groups && i < items) {
        v = dot(i / n, i % n, std::min(K, g * per), std::min(K, (g + 1) * per));
      }
      partial[threadIdx.x] = v;
      __syncthreads();
      if (threadIdx.x < items) {
        acc_t sum = 0;
        for (int64_t j = 0; j < groups; ++j) sum += partial[j * padded + threadIdx.x];
        store(threadIdx.x / n, threadIdx.x % n, sum);
      }
    }
    __syncthreads();
  }

  // Columns [c0, c1) of A W, as CUDABackend::gemm_weight takes them.
  template <class scalar_t>
  static __device__ void gemm_weight(int64_t m, int64_t c0, int64_t c1, const scalar_t* A,
                                     int64_t lda, const Weight<scalar_t>& w, scalar_t beta,
                                     scalar_t* C, int64_t ldc) {
    gemm(m, c1 - c0, w.K, A, lda, w.data + c0, w.N, beta, C + c0, ldc);
  }

  template <class scalar_t>
  static __device__ void copy(scalar_t* dst, const scalar_t* src, int64_t count) {
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) dst[i] = src[i];
    __syncthreads();
  }

  // Unit parts are the CPU's: a block always has all units of its rows.
  template <class scalar_t>
  static __device__ void copy_cols(scalar_t*, const scalar_t*, int64_t, int64_t, int64_t,
                                   int64_t) {
    __trap();
  }

  template <class F>
  static __device__ void pointwise(const F& f, int64_t rows, int64_t col_begin,
                                   int64_t col_end) {
    using V = at::opmath_type<typename F::scalar_type>;
    const int64_t cols = col_end - col_begin;
    for (int64_t i = threadIdx.x; i < rows * cols; i += blockDim.x) {
      f.template apply<V>(i / cols, col_begin + i % cols);
    }
    __syncthreads();
  }
};

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

__device__ inline Part block_rows(int64_t B, const LayerDims& d, int64_t per_block) {
  const int64_t begin = int64_t(blockIdx.x) * per_block;
  return Part{begin, std::min(begin + per_block, B), 0, d.H};
}

// A block's shared memory: the recurrent weight (when the launch reserved room for it), then
// the block's rows of the per-row buffers that every step reads right after writing them (the
// states, the recurrent products), so that a step's stages meet in shared memory rather than
// through the L2 cache.
template <class scalar_t>
struct SharedCarve {
  scalar_t* next;

  __device__ SharedCarve() {
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    next = reinterpret_cast<scalar_t*>(shared_bytes);
  }
  __device__ Weight<scalar_t> weight(Weight<scalar_t> w, bool to_shared) {
    if (!to_shared) return w;
    for (int64_t i = threadIdx.x; i < w.K * w.N; i += blockDim.x) next[i] = w.data[i];
    w.data = next;
    next += w.K * w.N;
    return w;
  }
  // The part's rows of a per-row buffer [B, cols] (null stays null), loaded if `load`; returns
  // the pointer the loop indexes by absolute row (it adds part.begin * cols back).
  __device__ scalar_t* rows(scalar_t* global, const Part& part, int64_t cols, bool load) {
    if (global == nullptr) return nullptr;
    scalar_t* local = next;
    next += (part.end - part.begin) * cols;
    if (load) {
      const scalar_t* src = global + part.begin * cols;
      for (int64_t i = threadIdx.x; i < (part.end - part.begin) * cols; i += blockDim.x) {
        local[i] = src[i];
      }
    }
    return local - part.begin * cols;
  }
};

// Shared memory a block needs for its per-row buffers (SharedCarve::rows), in elements.
inline int64_t shared_row_elems(const LayerDims& d, int64_t rows, bool forward) {
  const int64_t lstm = d.mode == Mode::LSTM ? d.H : 0;
  return rows * (forward ? d.P + lstm + d.G : d.P + lstm + (d.proj ? d.H : 0));
}

template <class scalar_t>
__device__ void store_rows(scalar_t* global, const scalar_t* local, const Part& part,
                           int64_t cols) {
  if (global == nullptr) return;
  for (int64_t i = part.begin * cols + threadIdx.x; i < part.end * cols; i += blockDim.x) {
    global[i] = local[i];
  }
}

template <class scalar_t, bool Train>
__global__ void __launch_bounds__(kBlockLoopMaxThreads)
    forward_block_loop(ScheduleView s, LayerDims d, bool reverse, int64_t rows_per_block,
                       ForwardBuffers<scalar_t> b, bool shared_weight) {
  const Part part = block_rows(s.B, d, rows_per_block);
  SharedCarve<scalar_t> carve;
  ForwardBuffers<scalar_t> local = b;
  local.w_hh_t = carve.weight(b.w_hh_t, shared_weight);
  local.h_state = carve.rows(b.h_state, part, d.P, true);
  local.c_state = carve.rows(b.c_state, part, d.H, true);
  local.hg = carve.rows(b.hg, part, d.G, false);
  __syncthreads();
  BlockSync sync;
  forward_loop<BlockBackend, scalar_t, Train>(s, d, reverse, part, sync, local);
  store_rows(b.h_state, local.h_state, part, d.P);
  store_rows(b.c_state, local.c_state, part, d.H);
}

template <class scalar_t>
__global__ void __launch_bounds__(kBlockLoopMaxThreads)
    backward_block_loop(ScheduleView s, LayerDims d, bool reverse, int64_t rows_per_block,
                        BackwardBuffers<scalar_t> b, bool shared_weight) {
  const Part part = block_rows(s.B, d, rows_per_block);
  SharedCarve<scalar_t> carve;
  BackwardBuffers<scalar_t> local = b;
  local.w_hh = carve.weight(b.w_hh, shared_weight);
  local.dh_state = carve.rows(b.dh_state, part, d.P, true);
  local.dc_state = carve.rows(b.dc_state, part, d.H, true);
  local.dr = carve.rows(b.dr, part, d.H, false);
  __syncthreads();
  BlockSync sync;
  backward_loop<BlockBackend, scalar_t>(s, d, reverse, part, sync, local);
  store_rows(b.dh_state, local.dh_state, part, d.P);
  store_rows(b.dc_state, local.dc_state, part, d.H);
}

// Which loop runs a layer on the GPU: FUSED_RNN_CUDA_LOOP=block (always the kernel above),
// steps (always step by step: cuBLAS and a pointwise kernel per step) or auto (the default:
// the kernel above up to a recurrent weight of kBlockLoopForwardBytes / kBlockLoopBackwardBytes,
// in shared memory where it fits, else read through the caches).
enum class CudaLoop { Auto, Block, Steps };

inline CudaLoop cuda_loop_setting() {
  const char* v = std::getenv("FUSED_RNN_CUDA_LOOP");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return CudaLoop::Auto;
  if (std::strcmp(v, "block") == 0) return CudaLoop::Block;
  if (std::strcmp(v, "steps") == 0) return CudaLoop::Steps;
  TORCH_CHECK(false, "fused_rnn: FUSED_RNN_CUDA_LOOP must be auto, block or steps, got '", v,
              "'");
}

// Measured on an H100 (benchmarks/results/cuda-h100-2026-11-23.md: FUSED_RNN_CUDA_LOOP forced
// each way): the block loop wins the forward pass up to an fp32 LSTM of H=128 (256 KB of W_hh,
// read from L2 each step) and loses from H=256 (1 MB); the backward pass still wins at H=256
// and loses at H=512 (4 MB), where cuBLAS's per-step GEMM spreads the weight over the GPU.
constexpr size_t kBlockLoopForwardBytes = 256 * 1024;
constexpr size_t kBlockLoopBackwardBytes = 1024 * 1024;

// How one layer's block loop is launched, or why not.
struct BlockLaunch {
  bool use = false;
  int64_t blocks = 0, rows_per_block = 0, threads = 0;
  size_t shared = 0;  // dynamic shared memory: the weight if it fits, and the per-row buffers
  bool shared_weight = false;
};

template <class scalar_t>
BlockLaunch plan_block_loop(const Schedule& s, const LayerDims& d, bool forward) {
  BlockLaunch l;
  const CudaLoop setting = cuda_loop_setting();
  if (setting == CudaLoop::Steps) return l;
  const size_t weight = size_t(d.P) * d.G * sizeof(scalar_t);
  if (setting == CudaLoop::Auto &&
      weight > (forward ? kBlockLoopForwardBytes : kBlockLoopBackwardBytes)) {
    return l;
  }
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  // A block per row while there are rows for every SM, then rows shared out evenly.
  const int64_t sms = prop->multiProcessorCount;
  l.rows_per_block = std::max<int64_t>(1, (s.B + sms - 1) / sms);
  l.blocks = (s.B + l.rows_per_block - 1) / l.rows_per_block;
  const int64_t work = l.rows_per_block * d.G;
  l.threads = std::min<int64_t>(kBlockLoopMaxThreads,
                               std::max<int64_t>(128, (work + 31) / 32 * 32));
  // What the kernel's static shared memory (gemm's partial sums) leaves.
  const size_t room = prop->sharedMemPerBlockOptin -
                      kBlockLoopMaxThreads * sizeof(at::opmath_type<scalar_t>) - 1024;
  const size_t rows = size_t(shared_row_elems(d, l.rows_per_block, forward)) * sizeof(scalar_t);
  if (rows > room) return l;  // (only with many rows per block and wide layers)
  l.use = true;
  l.shared_weight = rows + weight <= room;
  l.shared = rows + (l.shared_weight ? weight : 0);
  return l;
}

template <class Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(bytes)));
  }
}

// The schedule's rows and offsets on the device, for the kernel to read.
inline at::Tensor schedule_on_device(const Schedule& s, const at::Device& device) {
  at::Tensor host = at::empty({2 * s.T}, at::TensorOptions(at::kLong).pinned_memory(true));
  int64_t* p = host.data_ptr<int64_t>();
  std::copy(s.rows.begin(), s.rows.end(), p);
  std::copy(s.offset.begin(), s.offset.end(), p + s.T);
  return host.to(device, /*non_blocking=*/true);
}

// One launch of a block-loop kernel (forward or backward: the same parameters but the buffers).
template <class Buffers>
void launch_block_loop(void (*kernel)(ScheduleView, LayerDims, bool, int64_t, Buffers, bool),
                       const BlockLaunch& l, const Schedule& s, const LayerDims& d, bool reverse,
                       const Buffers& b) {
  const at::Tensor sched = schedule_on_device(s, at::Device(at::kCUDA, at::cuda::current_device()));
  const int64_t* p = sched.const_data_ptr<int64_t>();
  allow_shared(kernel, l.shared);
  kernel<<<l.blocks, l.threads, l.shared, at::cuda::getCurrentCUDAStream()>>>(
      ScheduleView{p, p + s.T, s.T, s.B, s.N}, d, reverse, l.rows_per_block, b, l.shared_weight);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class scalar_t>
bool block_forward(const Schedule& s, const LayerDims& d, bool reverse, bool train,
                   const ForwardBuffers<scalar_t>& b) {
  const BlockLaunch l = plan_block_loop<scalar_t>(s, d, /*forward=*/true);
  if (!l.use) return false;
  launch_block_loop(
      train ? forward_block_loop<scalar_t, true> : forward_block_loop<scalar_t, false>, l, s, d,
      reverse, b);
  return true;
}

template <class scalar_t>
bool block_backward(const Schedule& s, const LayerDims& d, bool reverse,
                    const BackwardBuffers<scalar_t>& b) {
  const BlockLaunch l = plan_block_loop<scalar_t>(s, d, /*forward=*/false);
  if (!l.use) return false;
  launch_block_loop(backward_block_loop<scalar_t>, l, s, d, reverse, b);
  return true;
}

}  // namespace fused_rnn
