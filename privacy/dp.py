"""Model-agnostic Opacus DP-SGD wiring for user-level DP (one example per customer).

:class:`DPTrainingSession` turns a plain ``nn.Module``, its optimizer and a map-style
dataset of per-customer examples into one round of DP-SGD: Poisson sampling at Opacus's
real rate 1/⌈n/B⌉, per-example clipping to ``max_grad_norm`` and Gaussian noise of std
``noise_multiplier · max_grad_norm`` on the summed clipped gradients, averaged by Opacus's
expected batch size. A model's training loop only supplies ``loss_fn(module, batch)``
returning one loss per example and calls :meth:`DPTrainingSession.step`; three ways of
computing what Opacus clips sit behind that one call, two Opacus grad-sample modes and a
third for models that can derive their per-example gradients from their output gradient:

- ``"hooks"`` (Opacus default): per-example gradients are materialised, then clipped.
- ``"ghost"`` (ghost clipping, Li et al. 2022; Bu et al. 2023): per-example gradient *norms*
  are computed without materialising gradients — for ``nn.Linear`` and ``nn.Embedding``
  from activations and backprops, for other layers from their per-example gradients
  ("fast gradient clipping") — then a second backward pass on the clip-weighted loss sums
  the clipped gradients. Parameter tying is not supported in this mode.
- ``"output"``: per-example gradients from the output gradient, for a model that supplies
  ``output_grad_samples(module, batch, output_grad)``. One backward pass runs through the
  loss to the module's output only, giving ``output_grad`` (row ``b``: the gradient of
  ``loss_b`` with respect to output row ``b``); the model turns it into every parameter's
  per-example gradients — its own grad samplers, fed each layer's output gradient through
  its known wiring instead of by Opacus's hooks — and Opacus's ``DPOptimizer`` clips, sums,
  adds noise and averages them exactly as in ``"hooks"`` mode. No backward pass below the
  output, no hooks. The grad samples must be exact (test them against ``"hooks"`` mode);
  row ``b`` of the output must depend on example ``b`` alone, and ``loss_fn`` must call the
  module once and reach the parameters only through that output.

A custom Opacus grad sampler (``opacus.grad_sample.register_grad_sampler``, and
``register_norm_sampler`` for ghost mode) registered for a model's layer is picked up as is.

**The plan is public, the data are not.** Poisson sampling runs at the rate Opacus uses,
1/⌈n/B⌉, and the noisy sum is averaged by its expected batch size q·n — with n the
training cohort's size *as the site released it* (``cohort_size``: a noisy count,
:mod:`privacy.release`), not its exact size. So the sampling rate, the number of steps and
the averaging denominator are all functions of public values, as the DP-SGD analysis
assumes (Opacus derives them from the dataset's exact length). A cohort that is empty
but released as large enough still takes every step: steps of pure noise.

**A non-finite example contributes zero.** Weights a server crafted can make one
customer's loss or gradient overflow; clipping an infinite gradient gives NaN, and the
whole update would be NaN exactly when that customer was sampled — one bit about them per
round, outside the noise. So before clipping, every example whose per-example gradient
has a non-finite entry is set to zero (``"hooks"`` and ``"output"`` modes; ``"ghost"``
mode, used only by the DP-step benchmark, drops non-finite per-example losses but not a
finite loss with a non-finite gradient).

Privacy accounting is *not* done here: the engine's own accountant is ignored. Record
:meth:`DPTrainingSession.segment` (sample rate, σ, steps taken) in the site's
:class:`privacy.ledger.PrivacyLedger`, which reports ε.

Build a fresh module (with the global weights loaded) and a fresh session every round:
Opacus must never wrap the same module twice.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import AbstractGradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from privacy.accountants import DPSegment
from privacy.planning import opacus_sample_rate, opacus_steps_per_epoch

PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]
OutputGradSamples = Callable[[nn.Module, Any, torch.Tensor], dict[nn.Parameter, torch.Tensor]]
"""``output_grad_samples(module, batch, output_grad)``: every trainable parameter's
per-example gradients ``(B, *shape)`` (as an Opacus grad sampler returns them), where row
``b`` of ``output_grad`` is ``∂loss_b / ∂output_b``."""
GRAD_SAMPLE_MODES = ("hooks", "ghost", "output")


class DPTrainingSession:
    """One round of DP-SGD on one site's data.

    Args:
        module: the plain model, global weights already loaded. Hooks are attached to it for
            the session's lifetime (Opacus's; in ``"output"`` mode one that captures its
            output); :meth:`close` removes them.
        optimizer: an optimizer over ``module``'s parameters (e.g. ``torch.optim.SGD``).
        dataset: map-style dataset with exactly one example per customer (user-level DP).
        batch_size: nominal batch size B; the sampling rate is 1 / ⌈n / B⌉ for the cohort
            size n below.
        noise_multiplier: σ from :func:`privacy.planning.plan_dp`.
        max_grad_norm: per-example clipping norm C.
        loss_fn: ``loss_fn(module, batch)`` returns a 1-D tensor with one loss per example
            in ``batch`` (no reduction). It is called with the plain module.
        grad_sample_mode: ``"hooks"``, ``"ghost"`` or ``"output"`` (see the module docstring).
        output_grad_samples: the module's per-example gradients from its output gradient;
            required by ``"output"`` mode, unused by the others.
        collate_fn: batches examples, as for a ``DataLoader``.
        seed: seeds Poisson sampling and noise, for reproducible simulations and tests.
            ``None`` (deployment) seeds them from the operating system's entropy.
        cohort_size: the training cohort's size the plan was made for, as the site released
            it (module docstring); ``None``: ``len(dataset)``, for studies whose dataset
            size is public.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Dataset,
        *,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        loss_fn: PerExampleLoss,
        grad_sample_mode: str = "hooks",
        output_grad_samples: OutputGradSamples | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        seed: int | None = None,
        cohort_size: int | None = None,
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}"
            )
        if grad_sample_mode == "output" and output_grad_samples is None:
            raise ValueError('grad_sample_mode "output" needs the model\'s output_grad_samples')
        if isinstance(module, AbstractGradSampleModule) or hasattr(
            module, "autograd_grad_sample_hooks"
        ):
            raise ValueError(
                "module is already wrapped by Opacus; build a fresh module for every round "
                "and load the global weights into it before starting a session"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cohort = len(dataset) if cohort_size is None else cohort_size
        if cohort < 1:
            raise ValueError(f"the cohort size must be >= 1, got {cohort}")
        sample_rate = opacus_sample_rate(cohort, batch_size)
        expected_batch_size = int(cohort * sample_rate)

        # Own generators, so noise stays unpredictable even if model code seeds torch's global
        # generator. Opacus's secure_mode would need torchcsprng, which the stack lacks.
        if seed is None:
            seed = secrets.randbits(62)
        sampling_generator = torch.Generator().manual_seed(seed)
        noise_generator = torch.Generator().manual_seed(seed + 1)
        module.train()
        self._outputs: list[torch.Tensor] = []
        if len(dataset) == 0 or grad_sample_mode == "output":
            # What make_private builds for hooks mode, minus the hooks: the same module check
            # and optimizer; no per-example gradients come from hooks (output mode derives
            # them, an empty cohort has none).
            ModuleValidator.validate(module, strict=True)
            self.optimizer = DPOptimizer(
                optimizer,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size,
                loss_reduction="mean",
                generator=noise_generator,
            )
            capture = module.register_forward_hook(
                lambda _module, _inputs, output: self._outputs.append(output)
            )

            def release() -> None:  # as Opacus's cleanup: no per-example gradients left behind
                capture.remove()
                for parameter in self.optimizer.params:
                    if hasattr(parameter, "grad_sample"):
                        del parameter.grad_sample

            self._release = release
            if len(dataset) == 0:
                grad_sample_mode = "output"  # every batch empty: noise-only steps
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                engine = PrivacyEngine(accountant="rdp")
            made_private = engine.make_private(
                module=module,
                optimizer=optimizer,
                data_loader=DataLoader(dataset, collate_fn=collate_fn),  # replaced below
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=False,
                noise_generator=noise_generator,
                grad_sample_mode=grad_sample_mode,
            )
            if grad_sample_mode == "ghost":
                # The returned criterion wrapper is unused: step() wraps the per-example
                # losses the same way, so any loss function works, not just torch criteria.
                self._wrapped, self.optimizer, _, _ = made_private
            else:
                self._wrapped, self.optimizer, _ = made_private
            self.optimizer.expected_batch_size = expected_batch_size  # public, not len(dataset)
            self._release = self._wrapped.cleanup
        self.data_loader: Iterable[Any]
        if len(dataset) == 0:
            self.data_loader = [[] for _ in range(opacus_steps_per_epoch(cohort, batch_size))]
        else:
            self.data_loader = DPDataLoader(
                dataset,
                sample_rate=sample_rate,
                collate_fn=collate_fn,
                generator=sampling_generator,
            )
        self.sample_rate = sample_rate
        self._module = module
        self._output_grad_samples = output_grad_samples
        self._loss_fn = loss_fn
        self.grad_sample_mode = grad_sample_mode
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.steps_taken = 0

    @property
    def steps_per_epoch(self) -> int:
        """Batches (= noisy steps) in one pass over :attr:`data_loader`."""
        return len(self.data_loader)

    @property
    def expected_batch_size(self) -> int:
        """Opacus's averaging denominator: ``int(len(dataset) * sample_rate)``, not B."""
        return self.optimizer.expected_batch_size

    def step(self, batch: Any) -> float | None:
        """One noisy DP-SGD step on a batch from :attr:`data_loader`.

        Returns the batch's mean loss, or ``None`` for an empty Poisson batch. An empty
        batch skips the forward pass but still takes a step of pure noise: the accountant
        counts every step, and skipping it would reveal that the sample was empty.
        """
        if self._module is None:
            raise RuntimeError("this DP training session is closed")
        self.optimizer.zero_grad(set_to_none=True)
        examples = _batch_size(batch)
        loss = None
        if examples == 0:
            self._zero_gradients_for_empty_batch()
        else:
            self._outputs.clear()
            per_example_loss = self._loss_fn(self._module, batch)
            if per_example_loss.shape != (examples,):
                raise ValueError(
                    f"loss_fn must return one loss per example, shape ({examples},); "
                    f"got {tuple(per_example_loss.shape)}"
                )
            if self.grad_sample_mode == "output":
                self._grad_samples_from_output(per_example_loss, batch)
            else:
                with warnings.catch_warnings():
                    # Opacus's hooks fire on module outputs when no input needs a gradient,
                    # and torch warns at every step; by design (gradients are for weights).
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    if self.grad_sample_mode == "ghost":
                        finite = per_example_loss.isfinite()
                        kept = torch.where(
                            finite,
                            per_example_loss,
                            torch.zeros_like(finite, dtype=per_example_loss.dtype),
                        )
                        DPTensorFastGradientClipping(
                            self._wrapped, self.optimizer, kept, loss_reduction="mean"
                        ).backward()
                    else:
                        per_example_loss.mean().backward()
            _zero_non_finite_examples(self.optimizer.params)
            finite = per_example_loss.detach().isfinite()
            loss = per_example_loss.detach()[finite].mean().item() if finite.any() else None
        self.optimizer.step()
        self.steps_taken += 1
        return loss

    def _grad_samples_from_output(self, per_example_loss: torch.Tensor, batch: Any) -> None:
        """``"output"`` mode: set every parameter's ``grad_sample`` for Opacus's optimizer."""
        if len(self._outputs) != 1:
            raise ValueError(
                'grad_sample_mode "output" needs a loss_fn that calls the module exactly once, '
                f"got {len(self._outputs)} calls"
            )
        # Row b: ∂loss_b/∂output_b, since row b of the output depends on example b alone.
        (output_grad,) = torch.autograd.grad(per_example_loss.sum(), self._outputs.pop())
        with torch.no_grad():
            grad_samples = self._output_grad_samples(self._module, batch, output_grad)
        for parameter, grad_sample in grad_samples.items():
            parameter.grad_sample = grad_sample

    def run_epoch(self) -> float:
        """One pass over :attr:`data_loader`; mean loss over non-empty batches (NaN if none)."""
        losses = [loss for batch in self.data_loader if (loss := self.step(batch)) is not None]
        return sum(losses) / len(losses) if losses else float("nan")

    def segment(self) -> DPSegment:
        """The DP segment trained so far: real sample rate, σ and steps taken."""
        return DPSegment(self.sample_rate, self.noise_multiplier, self.steps_taken)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights as a plain ``state_dict`` (no ``_module.`` prefixes), copied."""
        if self._module is None:
            raise RuntimeError("this DP training session is closed")
        return {name: value.detach().clone() for name, value in self._module.state_dict().items()}

    def close(self) -> None:
        """Remove the session's hooks (Opacus's, and their per-example attributes) from the
        module."""
        if self._module is not None:
            self._release()
            self._module = None

    def __enter__(self) -> DPTrainingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _zero_gradients_for_empty_batch(self) -> None:
        """Give the DP optimizer what a zero-example backward pass would have produced."""
        for parameter in self.optimizer.params:
            if self.grad_sample_mode == "ghost":
                parameter.grad = torch.zeros_like(parameter)
            else:
                parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))


def _zero_non_finite_examples(parameters: Iterable[nn.Parameter]) -> None:
    """Set to zero every example whose per-example gradient has a non-finite entry in any
    parameter, before Opacus clips (module docstring)."""
    samples = [
        parameter.grad_sample
        for parameter in parameters
        if isinstance(getattr(parameter, "grad_sample", None), torch.Tensor)
    ]
    if not samples or samples[0].shape[0] == 0:
        return
    finite = torch.stack([s.reshape(s.shape[0], -1).isfinite().all(dim=1) for s in samples])
    finite = finite.all(dim=0)
    if bool(finite.all()):
        return
    for sample in samples:
        keep = finite.reshape(-1, *([1] * (sample.dim() - 1)))
        sample.copy_(torch.where(keep, sample, torch.zeros_like(sample)))


def _batch_size(batch: Any) -> int:
    """Examples in a batch: the leading dimension of its first tensor (batch_first)."""
    first = _first_tensor(batch)
    if first is not None and first.dim() > 0:
        return first.shape[0]
    if first is None and isinstance(batch, (list, tuple, Mapping)) and len(batch) == 0:
        return 0  # Opacus's stand-in when the very first Poisson batch is empty
    raise TypeError(
        f"cannot tell the batch size of a {type(batch).__name__}: a batch must contain "
        "tensors whose first dimension is the batch"
    )


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        children = batch.values()
    elif isinstance(batch, (list, tuple)):
        children = batch
    else:
        return None
    for child in children:
        if (tensor := _first_tensor(child)) is not None:
            return tensor
    return None
