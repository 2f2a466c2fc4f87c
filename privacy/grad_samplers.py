"""Opacus per-example gradient (and norm) samplers for the recommender's own layers.

Importing this module registers them with Opacus (``register_grad_sampler`` for the default
hooks mode, ``register_norm_sampler`` for ghost clipping). Opacus still does the DP: it
calls these for per-example gradients, then clips, adds noise and samples batches.

- :class:`models.recommender.ItemBias` computes ``scores + bias`` over the whole catalogue.
  For example ``n`` the gradient of its loss with respect to ``bias`` equals the gradient
  with respect to output row ``n`` — Opacus's ``backprops``, already rescaled to per-example
  losses. So the per-example gradient is ``backprops`` itself: no einsum, no extra tensor,
  where a catalogue-sized ``nn.Linear`` needs a ``(B, V, hidden)`` one.
- :class:`models.recommender.PersonalScorer` is an MLP over *packed* history rows (many
  rows per example). Its per-example gradient is the sum over the example's rows of the
  row gradients ``δ_l ⊗ a_{l-1}`` (backpropagation by hand through the recomputed MLP),
  computed as one block-sparse product per layer without materialising the ``(rows, out,
  in)`` outer products: the cost follows the real history lengths, never a padded batch.
"""

from __future__ import annotations

import warnings

import torch
from opacus.grad_sample import register_grad_sampler, register_norm_sampler
from torch import nn

from models.recommender import ItemBias, PersonalScorer


@register_grad_sampler(ItemBias)
def item_bias_grad_sample(
    layer: ItemBias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients ``(B, V)`` of the item bias: the output gradients."""
    return {layer.bias: backprops}


@register_norm_sampler(ItemBias)
def item_bias_norm_sample(
    layer: ItemBias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradient norms ``(B,)`` of the item bias (ghost clipping)."""
    return {layer.bias: torch.linalg.vector_norm(backprops, dim=1)}


@register_grad_sampler(PersonalScorer)
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
