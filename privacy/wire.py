"""The wire contract between the fedshop ServerApp and ClientApp: every key that crosses it.

A privacy rule, kept in plain names with no Flower in sight: the site checks its replies
against it before they leave, and the server checks what arrives. Each model's own
evaluation keys are declared by the model (``FederatedModel.evaluate_metric_keys`` in
:mod:`models.registry`); everything else is here.

Train reply (``RecordDict``):

- ``"arrays"``: ArrayRecord, the site's model weights after local training (a plain
  ``state_dict``, no Opacus ``_module.`` prefix).
- ``"metrics"``: MetricRecord with exactly :data:`TRAIN_METRIC_KEYS`: the training
  customers (``num-examples``), the mean local loss, and the site's *cumulative* privacy
  spend for the model as its ledger computes it: ``epsilon`` at ``delta`` after
  ``dp-steps`` DP-SGD steps in all rounds so far. A round trained without DP reports
  ``epsilon = inf``, ``delta = 0`` and ``dp-steps = 0``.
- ``"site"``: ConfigRecord with exactly :data:`SITE_KEYS` (the storefront name, which
  the server already knows from deployment; it is needed for per-storefront reports).

Evaluate reply: MetricRecord ``"metrics"`` with exactly the model's evaluation keys, all
sums or counts over the site's held-out customers, and the ``"site"`` record.

A site that declines a round replies with an error whose code is one of the ``DECLINED_*``
codes below and whose reason starts with the matching reason code, e.g.
``"privacy-budget-exhausted: ..."``.

Model delivery, once at the end of a run: a query message with action
:data:`INSTALL_MODEL` carries the run's model bundle in the ConfigRecord :data:`BUNDLE`,
file name -> bytes: the manifest (:data:`MANIFEST`, with the sha256 of every weight file)
and the weight files it names. The site checks every checksum, installs the bundle and
acknowledges with a MetricRecord ``"metrics"`` of exactly :data:`INSTALL_REPLY_METRIC_KEYS`
(how many models it installed) and the ``"site"`` record, or replies with error
:data:`INSTALL_FAILED` and a reason starting ``"install-failed: "``. Nothing per customer
travels either way.
"""

from __future__ import annotations

from collections.abc import Iterable

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
FACTS = "facts"
"""Record of a train or evaluate message holding the model's shared facts (the
recommender's catalogue, the churn cutoff): non-private data every site must agree on,
kept apart from the config so that no log line ever prints a whole catalogue."""
SITE = "site"

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
DELTA = "delta"
DP_STEPS = "dp-steps"

TRAIN_METRIC_KEYS: frozenset[str] = frozenset({NUM_EXAMPLES, TRAIN_LOSS, EPSILON, DELTA, DP_STEPS})
"""The only metric keys a train reply may carry."""

STOREFRONT = "storefront"
SITE_KEYS: frozenset[str] = frozenset({STOREFRONT})

# Train-message config keys set by the server. The local-training plan comes from the run
# config's per-model table (``recommender.learning-rate`` is sent as ``learning-rate`` with
# the recommender's messages); then the ε budget, the model and round bookkeeping. The
# model's shared facts travel in their own record, :data:`FACTS`.
LOCAL_EPOCHS = "local-epochs"
OPTIMIZER = "optimizer"
"""A name of :data:`models.optimizers.OPTIMIZERS`."""
LEARNING_RATE = "learning-rate"
BATCH_SIZE = "batch-size"
MAX_GRAD_NORM = "max-grad-norm"
MODEL_TRAINING_KEYS = (LOCAL_EPOCHS, OPTIMIZER, LEARNING_RATE, BATCH_SIZE, MAX_GRAD_NORM)
"""The training-plan keys every model has its own value of."""
EPSILON_BUDGET = "epsilon"
"""The site's ε budget per model; 0 or negative trains without DP (reported ε = inf)."""
ACCOUNTANT = "accountant"
"""The privacy accountant that plans DP (a name of :data:`privacy.accountants.ACCOUNTANTS`)."""
MODEL = "model"
SERVER_ROUND = "server-round"
ROUND_OFFSET = "round-offset"
PLANNED_ROUNDS = "planned-rounds"
PROXIMAL_MU = "proximal-mu"
ARRAY_NAMES = "array-names"
"""Train-config key of secure-aggregation rounds: the model's array names, in the order of
the legacy FitIns arrays (the legacy layout has no names)."""

# Error codes for declined rounds; above Flower's own ErrorCode range.
DECLINED_BUDGET_EXHAUSTED = 1001
DECLINED_NO_DATA = 1002
DECLINE_REASONS: dict[int, str] = {
    DECLINED_BUDGET_EXHAUSTED: "privacy-budget-exhausted",
    DECLINED_NO_DATA: "no-training-data",
}


class ContractViolation(RuntimeError):
    """A reply would carry keys the contract does not allow; nothing is sent."""


def check_keys(what: str, keys: Iterable[str], allowed: frozenset[str]) -> None:
    """Refuse ``keys`` unless they are exactly ``allowed`` (fail closed before sending).

    Raises:
        ContractViolation: naming the missing and the undocumented keys.
    """
    found = set(keys)
    if found != allowed:
        raise ContractViolation(
            f"{what} has keys {sorted(found)}, not the documented {sorted(allowed)}: "
            f"missing {sorted(allowed - found)}, undocumented {sorted(found - allowed)}"
        )


# Model delivery (server -> every site, after the run's last round).
INSTALL_MODEL = "install_model"
"""Action of the delivery query message (``query.install_model``; an identifier, as Flower
requires)."""
BUNDLE = "bundle"
"""ConfigRecord of the delivery message: bundle file name -> the file's bytes."""
MODELS_INSTALLED = "models-installed"
INSTALL_REPLY_METRIC_KEYS: frozenset[str] = frozenset({MODELS_INSTALLED})
"""The only metric keys a site's delivery acknowledgement may carry."""
INSTALL_FAILED = 1003
"""Error code of a site that could not install the delivered bundle (not a decline)."""
INSTALL_FAILED_REASON = "install-failed"

# The model bundle's manifest, as the server writes it and a site reads it.
MANIFEST = "manifest.json"
MANIFEST_MODELS = "models"
"""Manifest key: model name -> its entry (the keys below)."""
WEIGHTS_FILE = "weights-file"
SHA256 = "sha256"
"""Hex SHA-256 of the entry's weights file, as the server wrote it."""
ROUNDS_DONE = "rounds-done"
ARTEFACTS = "artefacts"
CREATED_AT = "created-at"
RUN_CONFIG = "run-config"
