"""Seed 000: toxic-comment classification (Jigsaw), six independent sigmoid outputs."""

import torch
from torch import nn

from ._impl import rnn_namespace


class ToxicCommentLSTM(nn.Module):
    """Embedding(V, 3) -> LSTM(3, 4, batch_first) -> last step -> Linear(4, 6) -> Sigmoid.

    Input: token ids [B, 150], cut/padded with pad id 1 (fused_rnn.data.jigsaw). Trained with
    BCELoss and Adam(lr=5e-3) in the seed."""

    def __init__(self, dict_size: int, output_size: int = 6, embedding_dim: int = 3,
                 hidden_dim: int = 4, impl: str = "fused"):
        super().__init__()
        self.embedding = nn.Embedding(dict_size, embedding_dim)
        self.lstm = rnn_namespace(impl).LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, output_size)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lstm_out, _ = self.lstm(self.embedding(x))
        return self.sigmoid(self.fc(lstm_out[:, -1]))
