"""The recommender's two layers and their per-example gradients for Opacus.

- :class:`ItemBias` computes ``scores + bias`` over the whole catalogue. For example ``n``
  the gradient of its loss with respect to ``bias`` equals the gradient with respect to
  output row ``n`` — Opacus's ``backprops``, already rescaled to per-example losses. So
  the per-example gradient is ``backprops`` itself: no einsum, no extra tensor, where a
  catalogue-sized ``nn.Linear`` needs a ``(B, V, hidden)`` one.
- :class:`PersonalScorer` is an MLP over *packed* history rows (many rows per example).
  Its per-example gradient is the sum over the example's rows of the row gradients
  ``δ_l ⊗ a_{l-1}`` (backpropagation by hand through the recomputed MLP), computed as
  block-sparse products without materialising the ``(rows, out, in)`` outer products —
  one per layer, the last two sharing one: the cost follows the real history lengths,
  never a padded batch.

:func:`register_grad_samplers` hands these to Opacus (``register_grad_sampler`` for the
hooks mode, ``register_norm_sampler`` for ghost clipping); in the ``"output"`` mode of
:mod:`privacy.dp` the model calls the grad samplers itself
(``NextBasketRecommender.per_example_gradients``). Either way Opacus still does the DP: it
clips the per-example gradients, adds noise and samples batches. Registration imports
Opacus, so it happens only when DP training starts.
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
    so Opacus reads the batch size B from it (as for ``nn.EmbeddingBag``). A forward pass with
    gradients keeps its layer inputs for that grad sampler (:meth:`forward_inputs_t`).

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
        self._last_inputs: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def layer(self, depth: int) -> tuple[nn.Parameter, nn.Parameter]:
        """``(weight, bias)`` of layer ``depth`` (0 = first)."""
        return getattr(self, f"weight_{depth}"), getattr(self, f"bias_{depth}")

    def layer_inputs_t(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's input, transposed (width × rows): the features, then each hidden
        ReLU output. Transposed so that a unit's values over the rows are contiguous, as the
        grad sampler's block-sparse products take them."""
        inputs = [features.t()]
        for depth in range(self.depth - 1):
            weight, bias = self.layer(depth)
            inputs.append(torch.relu(torch.addmm(bias.unsqueeze(1), weight, inputs[-1])))
        return inputs

    def forward(self, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of the ``N`` packed rows of a batch of ``len(offsets)`` examples."""
        inputs = self.layer_inputs_t(features)
        if torch.is_grad_enabled():
            # Kept for the grad sampler, which runs on these same features after the
            # backward pass (Opacus's hooks, or privacy.dp's "output" mode) and would
            # otherwise recompute them. Detached views: no copy, no graph kept alive.
            self._last_inputs = (features, [t.detach() for t in inputs])
        weight, bias = self.layer(self.depth - 1)
        return torch.addmm(bias.unsqueeze(1), weight, inputs[-1]).squeeze(0)

    def forward_inputs_t(self, features: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`layer_inputs_t` as the last forward pass with gradients computed them, if
        it ran on these very features (same memory, not modified since; Opacus hands the
        grad sampler a detached view of them), else recomputed."""
        if self._last_inputs is not None:
            seen, inputs = self._last_inputs
            if _same_tensor_data(seen, features):
                return inputs
        with torch.no_grad():
            return self.layer_inputs_t(features)


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
    grads: dict[nn.Parameter, torch.Tensor] = {}
    for (weight, bias), augmented in _augmented_gradients(layer, activations, backprops):
        grads[weight], grads[bias] = augmented[..., :-1], augmented[..., -1]
    return grads


def personal_scorer_norm_sample(
    layer: PersonalScorer, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradient norms ``(B,)`` of every MLP weight and bias (arguments as for
    :func:`personal_scorer_grad_sample`, whose gradients they are the norms of)."""
    norms: dict[nn.Parameter, torch.Tensor] = {}
    for (weight, bias), augmented in _augmented_gradients(layer, activations, backprops):
        norms[weight] = torch.linalg.vector_norm(augmented[..., :-1], dim=(1, 2))
        norms[bias] = torch.linalg.vector_norm(augmented[..., -1], dim=1)
    return norms


@torch.no_grad()
def _augmented_gradients(
    layer: PersonalScorer, activations: list[torch.Tensor], backprops: torch.Tensor
) -> list[tuple[tuple[nn.Parameter, nn.Parameter], torch.Tensor]]:
    """Each layer's ``(weight, bias)`` and per-example gradient of ``[weight | bias]``,
    ``(B, out, in + 1)``, last layer first: backpropagation by hand through the MLP's layer
    inputs (:meth:`PersonalScorer.forward_inputs_t`), with block-sparse products (the bias is
    a weight on a constant input, so it rides along as one more input column instead of a
    product of its own).

    A product ``Σ_{r in b} δ_r ⊗ ã_r`` per layer, except that the last two layers share one:
    a ReLU is positively homogeneous, ``h = m ⊙ z`` with ``m`` its 0/1 mask and ``z = W̃ ã``
    the pre-activation of the layer below, so from ``V[b] = Σ_r (s_r m_r) ⊗ ã_r`` (``s_r``
    the gradient of row r's score) the last layer's ``Σ_r s_r h_r`` is ``⟨W̃_j, V[b]_j⟩``
    per unit j, and the layer below's ``Σ_r δ_r ⊗ ã_r``, where ``δ_r = s_r w ⊙ m_r`` (``w``
    the last layer's weights), is V[b] with row j scaled by ``w_j``.
    """
    features, offsets = activations
    rows = len(features)
    inputs_t = layer.forward_inputs_t(features)
    ones = features.new_ones((rows, 1))

    def augmented(depth: int) -> torch.Tensor:
        """Layer ``depth``'s input and a column of ones, rows × (width + 1)."""
        return torch.cat([inputs_t[depth].t(), ones], dim=1)

    scores_t = backprops.reshape(1, rows)
    last = layer.depth - 1
    weight, bias = layer.layer(last)
    if last == 0:  # no hidden layer: the scores are linear in the features
        return [((weight, bias), _sum_of_outer_products(offsets, scores_t, augmented(0)))]
    below_weight, below_bias = layer.layer(last - 1)
    # (s ⊙ m) transposed, by ReLU's backward as autograd runs it: one fused kernel, on the
    # ReLU's output, positive exactly where its input is.
    masked_t = torch.ops.aten.threshold_backward(
        scores_t.expand(weight.shape[1], rows), inputs_t[last], 0.0
    )
    products = _sum_of_outer_products(offsets, masked_t, augmented(last - 1))
    below_augmented = torch.cat([below_weight, below_bias.unsqueeze(1)], dim=1)
    bounds = torch.cat([offsets, offsets.new_tensor([rows])])
    bias_sums = torch.segment_reduce(backprops, "sum", offsets=bounds)
    last_grads = torch.cat([(products * below_augmented).sum(2), bias_sums.unsqueeze(1)], 1)
    gradients = [
        ((weight, bias), last_grads.unsqueeze(1)),
        ((below_weight, below_bias), products * weight.reshape(1, -1, 1)),
    ]
    delta_t = weight.t() * masked_t  # δ of layer last - 1, transposed
    for depth in reversed(range(last - 1)):
        above_weight, _ = layer.layer(depth + 1)
        delta_t = torch.ops.aten.threshold_backward(
            above_weight.t() @ delta_t, inputs_t[depth + 1], 0.0
        )
        weight, bias = layer.layer(depth)
        gradients.append(
            ((weight, bias), _sum_of_outer_products(offsets, delta_t, augmented(depth)))
        )
    return gradients


@cache
def register_grad_samplers() -> None:
    """Register this module's per-example gradient (and norm) samplers with Opacus (once)."""
    from opacus.grad_sample import register_grad_sampler, register_norm_sampler

    register_grad_sampler(ItemBias)(item_bias_grad_sample)
    register_norm_sampler(ItemBias)(item_bias_norm_sample)
    register_grad_sampler(PersonalScorer)(personal_scorer_grad_sample)
    register_norm_sampler(PersonalScorer)(personal_scorer_norm_sample)


def _sum_of_outer_products(
    offsets: torch.Tensor, left_t: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """``G[b] = Σ_{r in b} left_t[:, r] ⊗ right[r]``, shape ``(B, left, right)``, where example
    ``b`` owns the packed rows ``offsets[b]`` up to the next offset (or the end).

    As ``M @ right`` with the sparse ``(left·B) × N`` matrix ``M[(o, b), r] = left_t[o, r]``
    for the rows r of example b. In CSR with rows ordered (o, b), row (o, b) spans the
    consecutive columns ``offsets[b]..offsets[b+1]-1`` and the values are ``left_t``'s rows
    one after another: the matrix is built without any scatter (nor copy, if ``left_t`` is
    contiguous).
    """
    (width, rows), examples = left_t.shape, len(offsets)
    # 32-bit indices when they fit: half the index memory, and faster sparse kernels.
    index_type = torch.int32 if width * rows < 2**31 else torch.int64
    row_starts = torch.arange(width, dtype=index_type).unsqueeze(1) * rows + offsets.to(index_type)
    crow = torch.cat([row_starts.reshape(-1), row_starts.new_tensor([width * rows])])
    columns = torch.arange(rows, dtype=index_type).repeat(width)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is enough
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(
            crow,
            columns,
            left_t.reshape(-1),
            size=(width * examples, rows),
            check_invariants=False,
        )
    return (matrix @ right).view(width, examples, -1).transpose(0, 1)


def _same_tensor_data(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether two tensors view the same memory alike, unmodified in between (a tensor and
    its detached views share the version counter that in-place changes bump)."""
    return (first.data_ptr(), first.shape, first.stride(), first._version) == (
        second.data_ptr(),
        second.shape,
        second.stride(),
        second._version,
    )
