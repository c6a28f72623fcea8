// CUDA registrations of the fused_rnn ops: the shared loop (sequence.h) on the CUDA backend.
#include <torch/library.h>

#include "../sequence.h"
#include "backend.cuh"

namespace fused_rnn {

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward<CUDABackend>);
  m.impl("rnn_backward", &rnn_backward<CUDABackend>);
  m.impl("rnn_backward_consume", &rnn_backward<CUDABackend, true>);
}

}  // namespace fused_rnn
