// CPU registrations of the fused_rnn ops.
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "../sequence.h"
#include "backend.h"

namespace fused_rnn {
namespace {

// fp16 and bf16 on the CPU, where torch.nn's RNNs run them too: the fp32 kernels on fp32 copies
// of the arguments, every result rounded back to the input's dtype, the workspace included (so
// the saved gates are in the input's dtype, as CUDA's kernels keep them, and the fake kernels'
// dtypes hold; rnn_backward_consume overwrites the fp32 copy of it, which its contract allows).
// fp32 math throughout, as on CUDA; torch.nn's CPU path rounds every intermediate op's result.
bool computes_in_fp32(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16;
}
// `t` in `dtype`, a contiguous one's copy in a CPUBackend::empty buffer (the pool): the
// weights' fp32 copies and the results' are megabytes, whose pages from glibc faulted on some
// calls and not others, by the heap's state (a bf16 GRU at T 1, B 8, H 512: forward 1.0-3.3 ms
// in one process, 0.35 in another; ~10% of a bf16 LSTM's at T 1, B 1, H 512 in page faults).
at::Tensor converted(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype || !t.is_contiguous()) return t.to(dtype);
  return CPUBackend::empty(t.sizes(), t.options().dtype(dtype)).copy_(t);
}
at::Tensor fp32(const at::Tensor& t) {  // (not batch_sizes, int64)
  return t.defined() && t.is_floating_point() ? converted(t, at::kFloat) : t;
}
c10::optional<at::Tensor> fp32(const c10::optional<at::Tensor>& t) {
  if (!t) return t;
  return fp32(*t);
}
template <class T>
const T& fp32(const T& other) {  // flags, the mode
  return other;
}

template <class Sig, Sig* Kernel>
struct StorageDtypes;
// Kernel (rnn_forward, rnn_backward, rnn_backward_consume: the arguments of the layer first, in
// ForwardArgs' order, input_batch_first last) for any floating dtype.
template <class R, class... Args, R (*Kernel)(Args...)>
struct StorageDtypes<R(Args...), Kernel> {
  static R call(Args... args) {
    const auto all = std::forward_as_tuple(args...);
    const at::Tensor& input = std::get<1>(all);
    if (!computes_in_fp32(input.scalar_type())) return Kernel(args...);
    // The arguments' checks (dtypes and devices included) on the arguments as given.
    const bool batch_first = std::get<sizeof...(Args) - 1>(all);
    const auto& batch_sizes = std::get<2>(all);
    check_layer_args(ForwardArgs{parse_mode(std::get<0>(all)),
                                 time_major(input, batch_sizes, batch_first), batch_sizes,
                                 std::get<3>(all), std::get<4>(all), std::get<5>(all),
                                 std::get<6>(all), std::get<7>(all), std::get<8>(all),
                                 std::get<9>(all), std::get<10>(all), true, false, batch_first});
    return std::apply([&](const auto&... t) { return R{converted(t, input.scalar_type())...}; },
                      Kernel(fp32(args)...));
  }
};
template <auto Kernel>
constexpr auto in_storage_dtypes =
    &StorageDtypes<std::remove_pointer_t<decltype(Kernel)>, Kernel>::call;

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_forward", in_storage_dtypes<&rnn_forward<CPUBackend>>);
  m.impl("rnn_backward", in_storage_dtypes<&rnn_backward<CPUBackend>>);
  m.impl("rnn_backward_consume", in_storage_dtypes<&rnn_backward<CPUBackend, true>>);
}

}  // namespace fused_rnn
