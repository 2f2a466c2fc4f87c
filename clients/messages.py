"""The wire contract between the fedshop ServerApp and ClientApp.

Every key that crosses the network is named here, once, so the server can check that
a reply carries exactly the documented metrics and nothing else (no raw data, no ids).

Train reply (``RecordDict``):

- ``"arrays"``: ArrayRecord, the site's model weights after local training (a plain
  ``state_dict``, no Opacus ``_module.`` prefix).
- ``"metrics"``: MetricRecord with exactly :data:`TRAIN_METRIC_KEYS`: the training
  customers (``num-examples``), the mean local loss, and the site's *cumulative* privacy
  spend for the model as its ledger computes it (RDP accountant): ``epsilon`` at
  ``delta`` after ``dp-steps`` DP-SGD steps in all rounds so far. A round trained without
  DP (run config ``epsilon <= 0``) reports ``epsilon = inf``, ``delta = 0`` and
  ``dp-steps = 0``: no guarantee, and nothing spent from the ledger.
- ``"site"``: ConfigRecord with exactly :data:`SITE_KEYS` (the storefront name, which
  the server already knows from deployment; it is needed for per-storefront reports).

A site that declines a round (privacy budget spent, no data for the model) replies
with an error whose code is one of the ``DECLINED_*`` codes below and whose reason
starts with the matching reason code, e.g. ``"privacy-budget-exhausted: ..."``.
"""

from __future__ import annotations

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
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

# Train-message config keys set by the server: the site's training plan for the model,
# copied from the run config's per-model table (``recommender.learning-rate`` is sent as
# ``learning-rate`` with the recommender's messages), the shared ε budget, then the model
# and round bookkeeping.
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
MODEL = "model"
CATALOGUE = "catalogue"
"""The recommender's item catalogue (list of item ids, position = output index); it is
product data, not customer data, and the server sends it so every site builds one network."""
CHURN_CUTOFF = "churn-cutoff"
"""The churn protocol's cutoff (ISO-8601, UTC), one for all sites so labels agree; the
server sends it with every churn message (see :mod:`server.shared_facts`)."""
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

# Evaluate reply: MetricRecord ``"metrics"`` with exactly the keys for the model, all
# sums or counts over the site's held-out customers, so the server can pool them.
SCORE_BINS_POSITIVE = "score-bins-positive"
SCORE_BINS_NEGATIVE = "score-bins-negative"
BRIER_SUM = "brier-sum"
HIT_SUM = "hit-sum"
RECALL_SUM = "recall-sum"
NDCG_SUM = "ndcg-sum"
EVALUATE_METRIC_KEYS: dict[str, frozenset[str]] = {
    "churn": frozenset({NUM_EXAMPLES, SCORE_BINS_POSITIVE, SCORE_BINS_NEGATIVE, BRIER_SUM}),
    "recommender": frozenset({NUM_EXAMPLES, HIT_SUM, RECALL_SUM, NDCG_SUM}),
}
"""The only metric keys an evaluate reply may carry, per model."""
