"""Which library the recurrent layers come from."""

import torch

IMPLS = ("fused", "torch")


def rnn_namespace(impl: str):
    """fused_rnn (the default) or torch.nn: both have LSTM, GRU, RNN and the cells."""
    if impl == "fused":
        import fused_rnn

        return fused_rnn
    if impl == "torch":
        return torch.nn
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
