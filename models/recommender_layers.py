"""The recommender's two layers and their per-example gradients for Opacus.

- :class:`ItemBias` computes ``scores + bias`` over the whole catalogue. For example ``n``
  the gradient of its loss with respect to ``bias`` equals the gradient with respect to
  output row ``n`` — Opacus's ``backprops``, already rescaled to per-example losses. So
  the per-example gradient is ``backprops`` itself: no einsum, no extra tensor, where a
  catalogue-sized ``nn.Linear`` needs a ``(B, V, hidden)`` one.
- :class:`PersonalScorer` is an MLP over *packed* history rows (many rows per example).
  Its per-example gradient is the sum over the example's rows of the row gradients
  ``δ_l ⊗ a_{l-1}`` (backpropagation by hand through the recomputed MLP), computed as one
  block-sparse product per layer without materialising the ``(rows, out, in)`` outer
  products: the cost follows the real history lengths, never a padded batch.

:func:`register_grad_samplers` hands these to Opacus (``register_grad_sampler`` for the
default hooks mode, ``register_norm_sampler`` for ghost clipping); Opacus still does the
DP: it calls them for per-example gradients, then clips, adds noise and samples batches.
Registration imports Opacus, so it happens only when DP training starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn


class ItemBias(nn.Module):
    """Adds a learned per-item bias to catalogue-wide scores: ``scores + bias``.

    Its own module so Opacus uses a dedicated grad sampler (the per-example gradient of the
    bias is the per-example gradient of the output; :func:`register_grad_samplers`).
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_items))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores + bias`` for ``(B, V)`` scores."""
        return scores + self.bias


class PersonalScorer(nn.Module):
    """ReLU MLP ``g`` from the personal features of packed history rows to one score each.

    The layers are this module's own parameters (``weight_l``, ``bias_l``; not ``nn.Linear``
    children nor a ``ParameterList``, which are modules of their own), because a packed row
    is not an example: Opacus must see the whole MLP as one layer whose grad sampler sums
    row gradients per example
    (:func:`register_grad_samplers`). ``offsets`` is unused here but is the module's last input
    so Opacus reads the batch size B from it (as for ``nn.EmbeddingBag``).

    Args:
        num_features: features per row.
        hidden: widths of the hidden layers.
    """

    def __init__(self, num_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [num_features, *hidden, 1]
        for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
            layer = nn.Linear(fan_in, fan_out)  # for its default initialisation only
            self.register_parameter(f"weight_{depth}", layer.weight)
            self.register_parameter(f"bias_{depth}", layer.bias)
        self.depth = len(widths) - 1

    def layer(self, depth: int) -> tuple[nn.Parameter, nn.Parameter]:
        """``(weight, bias)`` of layer ``depth`` (0 = first)."""
        return getattr(self, f"weight_{depth}"), getattr(self, f"bias_{depth}")

    def pre_activations(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's input to its ReLU (the last one is the score), rows × width."""
        outputs, inputs = [], features
        for depth in range(self.depth):
            weight, bias = self.layer(depth)
            outputs.append(nn.functional.linear(inputs, weight, bias))
            inputs = torch.relu(outputs[-1])
        return outputs

    def forward(self, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of the ``N`` packed rows of a batch of ``len(offsets)`` examples."""
        return self.pre_activations(features)[-1].squeeze(-1)


def item_bias_grad_sample(
    layer: ItemBias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients ``(B, V)`` of the item bias: the output gradients."""
    return {layer.bias: backprops}


def item_bias_norm_sample(
    layer: ItemBias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradient norms ``(B,)`` of the item bias (ghost clipping)."""
    return {layer.bias: torch.linalg.vector_norm(backprops, dim=1)}


def personal_scorer_grad_sample(
    layer: PersonalScorer, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients of every MLP weight and bias, ``(B, *shape)`` each.

    ``activations`` are the module inputs ``(features (N, F), offsets (B,))``; ``backprops``
    ``(N,)`` the per-example-loss gradients of the row scores.
    """
    features, offsets = activations
    rows = len(features)
    segments = _Segments(offsets, rows)
    with torch.no_grad():
        pre_activations = layer.pre_activations(features)
    inputs = [features, *(torch.relu(z) for z in pre_activations[:-1])]
    ones = features.new_ones((rows, 1))  # a bias is a weight on a constant input
    delta = backprops.reshape(rows, 1)  # δ_L: gradient of the score (last pre-activation)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    for depth in reversed(range(layer.depth)):
        weight, bias = layer.layer(depth)
        grads[weight] = segments.sum_of_outer_products(delta, inputs[depth])
        grads[bias] = segments.sum_of_outer_products(delta, ones).squeeze(2)
        if depth > 0:
            delta = (delta @ weight.detach()) * (pre_activations[depth - 1] > 0)
    return grads


@cache
def register_grad_samplers() -> None:
    """Register this module's per-example gradient (and norm) samplers with Opacus (once)."""
    from opacus.grad_sample import register_grad_sampler, register_norm_sampler

    register_grad_sampler(ItemBias)(item_bias_grad_sample)
    register_norm_sampler(ItemBias)(item_bias_norm_sample)
    register_grad_sampler(PersonalScorer)(personal_scorer_grad_sample)


class _Segments:
    """``rows`` packed rows grouped into examples: example ``b`` owns rows ``offsets[b]``
    up to the next offset (or the end)."""

    def __init__(self, offsets: torch.Tensor, rows: int):
        self.offsets, self.rows = offsets, rows

    def sum_of_outer_products(self, delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``G[b] = Σ_{r in b} delta[r] ⊗ inputs[r]``, shape ``(B, out, in)``.

        As ``M @ inputs`` with the sparse ``(out·B) × N`` matrix ``M[(o, b), r] = delta[r, o]``
        for the rows r of example b. In CSR with rows ordered (o, b), row (o, b) spans the
        consecutive columns ``offsets[b]..offsets[b+1]-1`` and the values are ``delta``'s
        columns one after another: the matrix is built without any scatter.
        """
        width, examples = delta.shape[1], len(self.offsets)
        row_starts = torch.arange(width).unsqueeze(1) * self.rows + self.offsets
        crow = torch.cat([row_starts.reshape(-1), row_starts.new_tensor([width * self.rows])])
        columns = torch.arange(self.rows).repeat(width)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is enough
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(
                crow,
                columns,
                delta.t().reshape(-1),
                size=(width * examples, self.rows),
                check_invariants=False,
            )
        return (matrix @ inputs).view(width, examples, -1).transpose(0, 1)
