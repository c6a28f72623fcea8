// The whole time loop of a small layer in one kernel: each thread block runs sequence.h's
// forward_loop / backward_loop on its own rows of the batch, step after step, with the
// recurrent weight in its threads' registers where they can hold it (RegisterTile), else in
// shared memory where it fits, else read through L1/L2. Rows never meet
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
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../sequence.h"

namespace fused_rnn {

constexpr int kBlockLoopMaxThreads = 512;

// Values of the recurrent weight each thread keeps in registers, where the whole weight fits
// (fp32, up to kWeightRegs x kBlockLoopMaxThreads = 128 KB: IMDB's H=64 LSTM, MNIST's H=128 RNN).
// Shared memory serves a block 128 bytes a cycle, so a step that reads a 64 KB weight from it
// waits 512 cycles on the reads alone; from registers the reads are free, as in cuDNN's
// persistent kernels.
constexpr int kWeightRegs = 64;

// Which part of a [K, N] weight thread t holds: column t % cols, rows [g * per, g * per + per)
// of group g = t / cols (`cols`: N padded to whole warps, so that a warp's threads share their
// rows and read the same elements of A). It fits with one column per thread and at most
// kWeightRegs rows each: with threads_for(K, N) threads or more.
struct RegisterTile {
  int cols, groups, per;

  __host__ __device__ static int64_t padded_cols(int64_t N) { return (N + 31) / 32 * 32; }
  __host__ __device__ static RegisterTile of(int threads, int64_t K, int64_t N) {
    const int cols = int(padded_cols(N));
    const int groups = threads / cols > 1 ? threads / cols : 1;
    return {cols, groups, int((K + groups - 1) / groups)};
  }
  // Threads that make the weight fit, or 0 where no block can hold it.
  static int threads_for(int64_t K, int64_t N) {
    const int64_t t = padded_cols(N) * ((K + kWeightRegs - 1) / kWeightRegs);
    return t <= kBlockLoopMaxThreads ? int(t) : 0;
  }
};

// The running sums of a split-k product, one per thread, in shared memory.
template <class acc_t>
__device__ acc_t* gemm_partials() {
  __shared__ acc_t partial[kBlockLoopMaxThreads];
  return partial;
}

// This thread's part of a weight (RegisterTile), into `reg` (zero past the weight's edges).
template <class scalar_t>
__device__ void load_register_weight(const Weight<scalar_t>& w, scalar_t (&reg)[kWeightRegs]) {
  const RegisterTile tile = RegisterTile::of(blockDim.x, w.K, w.N);
  const int c = threadIdx.x % tile.cols, g = threadIdx.x / tile.cols;
  const bool owner = c < w.N && g < tile.groups;
#pragma unroll
  for (int r = 0; r < kWeightRegs; ++r) {
    const int64_t k = int64_t(g) * tile.per + r;
    reg[r] = owner && r < tile.per && k < w.K ? w.data[k * w.N + c] : scalar_t(0);
  }
}

// sum_r a[r] w[r] over r < count, w in registers (constant indices only).
template <class scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> register_dot(const scalar_t* a,
                                                                   const scalar_t* w,
                                                                   int count) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t s[4] = {0, 0, 0, 0};
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (count == kWeightRegs && (reinterpret_cast<uintptr_t>(a) & 15) == 0) {
#pragma unroll
      for (int r = 0; r < kWeightRegs; r += 4) {
        const float4 v = *reinterpret_cast<const float4*>(a + r);
        s[0] += v.x * w[r];
        s[1] += v.y * w[r + 1];
        s[2] += v.z * w[r + 2];
        s[3] += v.w * w[r + 3];
      }
      return (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
#pragma unroll
  for (int r = 0; r < kWeightRegs; ++r) {
    if (r < count) s[r % 4] += static_cast<acc_t>(a[r]) * static_cast<acc_t>(w[r]);
  }
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// The backend that forward_loop / backward_loop run on inside the kernel: every call is made by
// all threads of the block, shares the work out over them and ends with __syncthreads(), so the
// next call sees its results. kRegisterWeight: the recurrent weight's `packed` points at this
// thread's registers (load_register_weight), which gemm_weight multiplies by.
template <bool kRegisterWeight>
struct BlockBackend {
  static constexpr bool kStepProjection = false;
  static constexpr bool kFoldRecurrent = false;  // hg is the block's own (carved) buffer
  static constexpr bool kStepGradients = false;

  template <class scalar_t>
  static __device__ void store(scalar_t* C, int64_t ldc, int64_t r, int64_t c,
                               at::opmath_type<scalar_t> v, at::opmath_type<scalar_t> beta) {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* out = C + r * ldc + c;
    *out = static_cast<scalar_t>(beta == acc_t(0) ? v : v + beta * static_cast<acc_t>(*out));
  }

  // Row-major C [m, n] = A B + beta C. Consecutive threads take consecutive columns (B's rows
  // are read contiguously, A's element is broadcast). With fewer outputs than threads, the k
  // range is split over groups of threads and the groups' sums are added through shared memory.
  template <class scalar_t>
  static __device__ void gemm(int64_t m, int64_t n, int64_t K, const scalar_t* A, int64_t lda,
                              const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C,
                              int64_t ldc) {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* partial = gemm_partials<acc_t>();
    const int64_t items = m * n;
    const int64_t padded = (items + 31) / 32 * 32;
    const acc_t b = static_cast<acc_t>(beta);
    auto dot = [&](int64_t r, int64_t c, int64_t k0, int64_t k1) {
      const scalar_t* a = A + r * lda;
      const scalar_t* w = B + c;
      // 16 loads issued before their products: a weight read from L2 (too large for shared
      // memory) is latency-bound, one round trip per batch of loads (ncu, H100: 4 at a time
      // stalled 81% of a 1 MB W_hh's backward step on them).
      constexpr int kBatch = 16;
      acc_t s[4] = {0, 0, 0, 0};
      int64_t k = k0;
      for (; k + kBatch <= k1; k += kBatch) {
        acc_t av[kBatch], wv[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          av[u] = static_cast<acc_t>(a[k + u]);
          wv[u] = static_cast<acc_t>(w[(k + u) * ldb]);
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) s[u % 4] += av[u] * wv[u];
      }
      for (; k < k1; ++k) s[0] += static_cast<acc_t>(a[k]) * static_cast<acc_t>(w[k * ldb]);
      return (s[0] + s[1]) + (s[2] + s[3]);
    };
    const int64_t groups = padded >= blockDim.x ? 1 : blockDim.x / padded;
    if (groups == 1) {
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        store(C, ldc, i / n, i % n, dot(i / n, i % n, 0, K), b);
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
        store(C, ldc, threadIdx.x / n, threadIdx.x % n, sum, b);
      }
    }
    __syncthreads();
  }

  // C [m, N] = A W + beta C with W in registers (RegisterTile): each thread's dot product over
  // its rows of W, the groups' sums added through shared memory.
  template <class scalar_t>
  static __device__ void register_gemm(int m, const scalar_t* A, int lda, const Weight<scalar_t>& w,
                                       scalar_t beta, scalar_t* C, int ldc) {
    using acc_t = at::opmath_type<scalar_t>;
    const RegisterTile tile = RegisterTile::of(blockDim.x, w.K, w.N);
    const int tid = threadIdx.x, c = tid % tile.cols, g = tid / tile.cols;
    const int N = int(w.N), k0 = g * tile.per;
    const int count = max(0, min(tile.per, int(w.K) - k0));
    const bool owner = c < N && g < tile.groups;
    const acc_t b = static_cast<acc_t>(beta);
    acc_t* partial = gemm_partials<acc_t>();
    for (int r = 0; r < m; ++r) {
      const acc_t v = owner ? register_dot(A + r * lda + k0, w.packed, count) : acc_t(0);
      if (tile.groups == 1) {
        if (owner) store(C, ldc, r, c, v, b);
        continue;
      }
      partial[tid] = v;
      __syncthreads();
      if (tid < N) {
        acc_t sum = 0;
        for (int j = 0; j < tile.groups; ++j) sum += partial[j * tile.cols + tid];
        store(C, ldc, r, tid, sum, b);
      }
      if (r + 1 < m) __syncthreads();  // before the next row's partial sums
    }
    __syncthreads();
  }

  // Columns [c0, c1) of A W, as CUDABackend::gemm_weight takes them (the register weight: all).
  template <class scalar_t>
  static __device__ void gemm_weight(int64_t m, int64_t c0, int64_t c1, const scalar_t* A,
                                     int64_t lda, const Weight<scalar_t>& w, scalar_t beta,
                                     scalar_t* C, int64_t ldc) {
    if constexpr (kRegisterWeight) {
      if (c0 != 0 || c1 != w.N) __trap();
      register_gemm(int(m), A, int(lda), w, beta, C, int(ldc));
    } else {
      gemm(m, c1 - c0, w.K, A, lda, w.data + c0, w.N, beta, C + c0, ldc);
    }
  }

  template <class scalar_t>
  static __device__ void copy(scalar_t* dst, const scalar_t* src, int64_t count) {
    for (int i = threadIdx.x; i < int(count); i += blockDim.x) dst[i] = src[i];
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
    const int cols = int(col_end - col_begin), total = int(rows) * cols;
    if (rows == 1) {  // (a block of one row: no division)
      for (int i = threadIdx.x; i < cols; i += blockDim.x) f.template apply<V>(0, col_begin + i);
    } else {
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int r = i / cols;
        f.template apply<V>(r, col_begin + (i - r * cols));
      }
    }
    __syncthreads();
  }
};

// The loops' sync (unit parts meeting; a block's parts are row parts, so never called).
struct BlockSync {
  template <class Shared>
  __device__ void operator()(const Shared&) const { __syncthreads(); }
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

// Where the kernel's recurrent weight is read from: this thread's registers (Regs: `reg`, which
// the weight's `packed` then points at), shared memory (`to_shared`: the launch reserved room),
// or where it is (L2).
template <bool Regs, class scalar_t, int R>
__device__ Weight<scalar_t> place_weight(SharedCarve<scalar_t>& carve, const Weight<scalar_t>& w,
                                         bool to_shared, scalar_t (&reg)[R]) {
  if constexpr (Regs) {
    load_register_weight(w, reg);
    Weight<scalar_t> held = w;
    held.packed = reg;
    return held;
  } else {
    return carve.weight(w, to_shared);
  }
}

template <class scalar_t, bool Train, bool Regs>
__global__ void __launch_bounds__(kBlockLoopMaxThreads)
    forward_block_loop(ScheduleView s, LayerDims d, bool reverse, int64_t rows_per_block,
                       ForwardBuffers<scalar_t> b, bool shared_weight) {
  const Part part = block_rows(s.B, d, rows_per_block);
  SharedCarve<scalar_t> carve;
  ForwardBuffers<scalar_t> local = b;
  scalar_t reg[Regs ? kWeightRegs : 1];
  local.w_hh_t = place_weight<Regs>(carve, b.w_hh_t, shared_weight, reg);
  local.h_state = carve.rows(b.h_state, part, d.P, true);
  local.c_state = carve.rows(b.c_state, part, d.H, true);
  local.hg = carve.rows(b.hg, part, d.G, false);
  __syncthreads();
  BlockSync sync;
  forward_loop<BlockBackend<Regs>, scalar_t, Train>(s, d, reverse, part, sync, local);
  store_rows(b.h_state, local.h_state, part, d.P);
  store_rows(b.c_state, local.c_state, part, d.H);
}

template <class scalar_t, bool Regs>
__global__ void __launch_bounds__(kBlockLoopMaxThreads)
    backward_block_loop(ScheduleView s, LayerDims d, bool reverse, int64_t rows_per_block,
                        BackwardBuffers<scalar_t> b, bool shared_weight) {
  const Part part = block_rows(s.B, d, rows_per_block);
  SharedCarve<scalar_t> carve;
  BackwardBuffers<scalar_t> local = b;
  scalar_t reg[Regs ? kWeightRegs : 1];
  local.w_hh = place_weight<Regs>(carve, b.w_hh, shared_weight, reg);
  local.dh_state = carve.rows(b.dh_state, part, d.P, true);
  local.dc_state = carve.rows(b.dc_state, part, d.H, true);
  local.dr = carve.rows(b.dr, part, d.H, false);
  __syncthreads();
  BlockSync sync;
  backward_loop<BlockBackend<Regs>, scalar_t>(s, d, reverse, part, sync, local);
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
  bool registers = false;      // the weight in registers (RegisterTile)
  bool shared_weight = false;  // else in shared memory, else read from L2
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
  // The weight in registers where a block's threads can hold it: forward W_hh^T [P, G],
  // backward W_hh [G, P]. fp32 only (a double takes two registers).
  if constexpr (std::is_same_v<scalar_t, float>) {
    const int64_t K = forward ? d.P : d.G, N = forward ? d.G : d.P;
    const int need = RegisterTile::threads_for(K, N);
    if (need > 0) {
      l.threads = std::max<int64_t>(l.threads, need);
      l.registers = true;
    }
  }
  // What the kernel's static shared memory (gemm's partial sums) leaves.
  const size_t room = prop->sharedMemPerBlockOptin -
                      kBlockLoopMaxThreads * sizeof(at::opmath_type<scalar_t>) - 1024;
  const size_t rows = size_t(shared_row_elems(d, l.rows_per_block, forward)) * sizeof(scalar_t);
  if (rows > room) return l;  // (only with many rows per block and wide layers)
  l.use = true;
  l.shared_weight = !l.registers && rows + weight <= room;
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
  auto kernel = train ? forward_block_loop<scalar_t, true, false>
                      : forward_block_loop<scalar_t, false, false>;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (l.registers) {
      kernel = train ? forward_block_loop<scalar_t, true, true>
                     : forward_block_loop<scalar_t, false, true>;
    }
  }
  launch_block_loop(kernel, l, s, d, reverse, b);
  return true;
}

template <class scalar_t>
bool block_backward(const Schedule& s, const LayerDims& d, bool reverse,
                    const BackwardBuffers<scalar_t>& b) {
  const BlockLaunch l = plan_block_loop<scalar_t>(s, d, /*forward=*/false);
  if (!l.use) return false;
  auto kernel = backward_block_loop<scalar_t, false>;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (l.registers) kernel = backward_block_loop<scalar_t, true>;
  }
  launch_block_loop(kernel, l, s, d, reverse, b);
  return true;
}

}  // namespace fused_rnn
