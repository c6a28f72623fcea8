"""Seed 004: the numpy RNN language model, h_t = tanh(U x_t + W h_{t-1}), o_t = softmax(V h_t),
on one-hot words (no biases)."""

import torch
from torch import nn

from ._impl import rnn_namespace


class RNNLanguageModel(nn.Module):
    """U = rnn.weight_ih_l0 [H, V], W = rnn.weight_hh_l0 [H, H], V = decoder.weight [V, H].

    forward(tokens [B, T]) -> log-probabilities [B, T, V] of the next word. Initialised as the
    seed does: U ~ U(+-1/sqrt(V)), W and V ~ U(+-1/sqrt(H))."""

    def __init__(self, vocab_size: int, hidden_dim: int = 100, impl: str = "fused"):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = rnn_namespace(impl).RNN(vocab_size, hidden_dim, bias=False, batch_first=True)
        self.decoder = nn.Linear(hidden_dim, vocab_size, bias=False)
        with torch.no_grad():
            self.rnn.weight_ih_l0.uniform_(-vocab_size ** -0.5, vocab_size ** -0.5)
            self.rnn.weight_hh_l0.uniform_(-hidden_dim ** -0.5, hidden_dim ** -0.5)
            self.decoder.weight.uniform_(-hidden_dim ** -0.5, hidden_dim ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(tokens, self.vocab_size).to(self.decoder.weight.dtype)
        hidden, _ = self.rnn(one_hot)
        return torch.log_softmax(self.decoder(hidden), dim=-1)
