r"""Many graph heads of one shape as one module: ``T`` MLPs computed with batched matrix products.

With hundreds of one-output graph tasks (ToxCast's 617 assays), ``T`` separate head modules cost more than the
encoder: with 617 two-layer heads a forward and backward took 724 ms, 194 ms of it in the encoder, most of the
rest the per-module overhead of small matrix products. :class:`GroupedGraphHeads` holds head ``t``'s layer ``k`` as
slice ``t`` of one ``[T, in_k, out_k]`` weight and computes every head with one ``baddbmm`` per layer:

.. math:: h^{(k)}_t = \sigma\big(h^{(k-1)}_t W^{(k)}_t + b^{(k)}_t\big), \qquad y_t = h^{(K)}_t \in \mathbb{R}^{B}

(no ``\sigma`` after the last layer; dropout between layers as in :func:`~graph_mtl.models.heads.mlp`). Each head
is initialised as ``nn.Linear`` initialises itself (weights and bias uniform in ``+-1/sqrt(in_k)``), so a grouped
head is distributed as ``T`` separate ones.

The input is the pooled graph representation ``[B, in]``, or, where a balancer wants every task's gradient at
it, that representation expanded once per task (``[T, B, in]``, a view, no copy): row ``t`` is then read by task
``t`` alone, and one backward of the summed losses gives every task's gradient at the shared representation
(see :class:`graph_mtl.engine.gradients.TaskRows`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GroupedGraphHeads(nn.Module):
    """``num_heads`` graph heads of ``num_layers`` linear layers and one output each (module docstring).

    Args:
        in_channels: width of the pooled graph representation.
        num_heads: the number of heads ``T``.
        hidden: width of the hidden layers.
        num_layers: linear layers per head.
        dropout: dropout between layers.
    """

    def __init__(self, in_channels: int, num_heads: int, hidden: int = 128, num_layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"head.num_layers: must be >= 1, got {num_layers}")
        widths = [in_channels] + [hidden] * (num_layers - 1) + [1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_heads, a, b)) for a, b in zip(widths, widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_heads, 1, b)) for b in widths[1:])
        self.dropout = nn.Dropout(dropout)
        self.num_heads = num_heads
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every head as ``nn.Linear`` initialises itself: uniform in ``+-1/sqrt(fan_in)``."""
        for weight, bias in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Predictions ``[B, T]`` from ``x``: the shared input ``[B, in]`` of every head, or per-task rows
        ``[T, B, in]`` (row ``t`` is head ``t``'s input). The same numbers either way; from ``[B, in]`` the first
        layer is one matrix product ``[B, in] x [in, T * out]``, which is cheaper in the backward (no ``[T, B, in]``
        gradient to form and sum)."""
        if x.dim() == 2:
            first = self.weights[0]  # [T, in, out] -> [in, T * out]
            joined = first.permute(1, 0, 2).reshape(first.shape[1], -1).to(x.dtype)
            h = (x @ joined).view(x.shape[0], self.num_heads, -1)
            h = h.transpose(0, 1) + self.biases[0].to(h.dtype)
        elif x.dim() == 3 and x.shape[0] == self.num_heads:
            h = torch.baddbmm(self.biases[0].to(x.dtype), x, self.weights[0].to(x.dtype))
        else:
            raise ValueError(f"grouped heads: expected input [B, in] or [{self.num_heads}, B, in], got "
                             f"{list(x.shape)}")
        for weight, bias in zip(self.weights[1:], self.biases[1:]):
            h = torch.baddbmm(bias.to(h.dtype), self.dropout(torch.relu(h)), weight.to(h.dtype))
        return h.squeeze(-1).T

    def extra_repr(self) -> str:
        shapes = " -> ".join(str(w.shape[1]) for w in self.weights) + " -> 1"
        return f"heads={self.num_heads}, {shapes}"
