"""The wire contract between the fedshop ServerApp and ClientApp: every key that crosses it.

A privacy rule, kept in plain names with no Flower in sight: the site checks its replies
against it before they leave, and the server checks what arrives. Each model's own
evaluation keys are declared by the model (``FederatedModel.evaluate_metric_keys`` in
:mod:`models.registry`); everything else is here.

Train and evaluate messages carry the global weights (``"arrays"``), the ``"config"``
and the model's shared facts (:data:`FACTS`). The facts (e.g. a catalogue of thousands of
items) travel in full only until the site has answered a message that carried them: from
then on the record holds only their :data:`FACTS_DIGEST` (in full, the facts travel
compressed as :data:`FACTS_PACKED`), and the site reads the facts it
stored under that digest (a site that has lost them declines with :data:`FACTS_UNKNOWN`
and gets them in full in the next round). With :data:`UPDATE_ENCODING` ``"int8"`` in a
train config, the weights travel 8-bit encoded (:mod:`common.wire_encoding`).

Train reply (``RecordDict``):

- ``"arrays"``: ArrayRecord, the site's model weights after local training (a plain
  ``state_dict``, no Opacus ``_module.`` prefix); under ``"int8"`` encoding, the site's
  update (trained minus received weights) encoded by
  :func:`common.wire_encoding.encode_int8` after the DP noise.
- ``"metrics"``: MetricRecord with exactly :data:`TRAIN_METRIC_KEYS`: the training
  cohort's size as the site *released* it (``num-examples``: a noisy count,
  :mod:`privacy.release`, made once per run and model and accounted in the ledger; the
  aggregation weight, and the size the site planned its DP-SGD with), and the site's
  *cumulative* privacy spend for the model as its ledger computes it: ``epsilon`` at
  ``delta`` (fixed in the site's policy) after ``dp-steps`` DP steps in all rounds so far
  (releases included), with the ``noise-multiplier`` of this round (a function of the
  released size, the plan and its policy; the server screens the update's norm with it). A round
  trained without DP (only if the site's policy allows it) reports ``epsilon = inf``,
  ``delta = 0``, ``dp-steps = 0`` and ``noise-multiplier = 0``. No training loss leaves
  a site: a mean of the customers' un-noised losses is outside the DP guarantee.
- ``"site"``: ConfigRecord with exactly :data:`SITE_KEYS`: the storefront name (which
  the server already knows from deployment; it is needed for per-storefront reports) and
  the site's privacy note ("" or why it planned the server's request down).

Evaluate reply: MetricRecord ``"metrics"`` with exactly the model's evaluation keys: its
queries' noisy answers (:attr:`models.registry.FederatedModel.evaluation_queries`, each
customer's contribution bounded, discrete Gaussian noise, a ledger segment inside the
site's cap), the held-out cohort's released size (``num-examples``), the standard
deviation of each (:data:`NOISE_SD`, :data:`NUM_EXAMPLES_NOISE_SD`), the site's cumulative
``epsilon`` and its :data:`EVALUATION_EPSILON`, and the ``"site"`` record. No exact count,
pair count, bin mean or spread leaves. When the released held-out size is below the
site's minimum cohort it sends nothing but a ``suppressed`` error, whose reason does not
say by how much.

Everything a server sends is checked before anything is reserved: the weights (finite,
the model's names and shapes, within its :attr:`~models.registry.FederatedModel.max_abs_weight`),
the shared facts (within the bounds of the site's policy, and the same for every message
of a run: facts that change within a run are refused) and the plan; a refusal for any of
these is ``invalid-server-input`` or ``privacy-policy`` and depends on the message alone.

A site that declines replies with an error whose code is one of the codes of
:data:`DECLINE_REASONS` and whose reason is ``"<reason code> (<storefront>): <detail>"``,
e.g. ``"privacy-budget-exhausted (Spain): ..."`` — never a crash of the round.

Model delivery, once at the end of a run: a query message with action
:data:`INSTALL_MODEL` carries the run's model bundle in the ConfigRecord :data:`BUNDLE`,
file name -> bytes: the manifest (:data:`MANIFEST`, with the sha256 of every weight file)
and the weight files it names. The site checks every checksum, installs the bundle and
acknowledges with a MetricRecord ``"metrics"`` of exactly :data:`INSTALL_REPLY_METRIC_KEYS`
(how many models it installed) and the ``"site"`` record, or refuses with error
:data:`INSTALL_FAILED` (``"install-failed (<storefront>): <detail>"``). Nothing per
customer travels either way.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
FACTS = "facts"
"""Record of a train or evaluate message holding the model's shared facts (the
recommender's catalogue, the churn cutoff): non-private data every site must agree on,
kept apart from the config so that no log line ever prints a whole catalogue."""
FACTS_DIGEST = "facts-digest"
"""Key of the :data:`FACTS` record: :func:`facts_digest` of the facts it stands for."""
FACTS_PACKED = "facts-packed"
"""Key of the :data:`FACTS` record: the facts in full, :func:`pack_facts` (bytes)."""
MAX_FACTS_BYTES = 64 << 20
"""Largest unpacked facts a site accepts (a catalogue of millions of items fits)."""
SITE = "site"

NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
DELTA = "delta"
DP_STEPS = "dp-steps"
NOISE_MULTIPLIER = "noise-multiplier"

TRAIN_METRIC_KEYS: frozenset[str] = frozenset(
    {NUM_EXAMPLES, EPSILON, DELTA, DP_STEPS, NOISE_MULTIPLIER}
)
"""The only metric keys a train reply may carry."""
NOISE_SD = "noise-sd"
"""Evaluate-reply key: the standard deviation of the noise on each released query value,
in the query's own units (customers, or units of a [0, 1] value)."""
NUM_EXAMPLES_NOISE_SD = "num-examples-noise-sd"
"""Evaluate-reply key: the standard deviation of the noise on ``num-examples``."""
EVALUATION_EPSILON = "evaluation-epsilon"
"""Evaluate-reply key: the ε of the run's evaluation releases so far, alone, at the site's
δ (its ``epsilon`` is its cumulative spend, everything composed)."""
EVALUATION_RELEASE_KEYS: frozenset[str] = frozenset(
    {NUM_EXAMPLES, NOISE_SD, NUM_EXAMPLES_NOISE_SD, EPSILON, EVALUATION_EPSILON}
)
"""The keys every evaluate reply carries beside the model's query answers."""

STOREFRONT = "storefront"
PRIVACY_NOTE = "privacy-note"
SITE_KEYS: frozenset[str] = frozenset({STOREFRONT, PRIVACY_NOTE})

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
"""The ε the server *asks* each site to spend on the model in this run; a site grants at
most what its own policy allows (:func:`privacy.planning.plan_site_run`). 0 or negative
asks for no DP, which a site declines unless its policy allows it."""
MODEL = "model"
SERVER_ROUND = "server-round"
ROUND_OFFSET = "round-offset"
PLANNED_ROUNDS = "planned-rounds"
PLANNED_EVALUATIONS = "planned-evaluations"
"""Train- and evaluate-config key: how many evaluations of the model the server plans in
the run; a site shares its evaluation ε among at most its policy's maximum of them."""
PROXIMAL_MU = "proximal-mu"
UPDATE_ENCODING = "update-encoding"
"""Train-config key: how the message's weights and the reply's update travel, one of
:data:`common.wire_encoding.UPDATE_ENCODINGS` (absent: dense float32)."""
ARRAY_NAMES = "array-names"
"""Train-config key of secure-aggregation rounds: the model's array names, in the order of
the legacy FitIns arrays (the legacy layout has no names)."""

# Error codes of a site's refusals; above Flower's own ErrorCode range.
DECLINED_BUDGET_EXHAUSTED = 1001
DECLINED_NO_DATA = 1002
DECLINED_POLICY = 1003
DECLINED_SITE_ERROR = 1004
SUPPRESSED = 1005
INSTALL_FAILED = 1006
"""A site that could not install the delivered bundle (its reply to the delivery)."""
FACTS_UNKNOWN = 1007
"""A message carried only the digest of shared facts the site does not hold."""
DECLINED_COHORT = 1008
"""The training cohort, by the site's noisy count, is below its minimum cohort."""
INVALID_INPUT = 1009
"""The message's weights, facts or plan fail the site's checks (nothing was reserved)."""
DECLINE_REASONS: dict[int, str] = {
    DECLINED_BUDGET_EXHAUSTED: "privacy-budget-exhausted",
    DECLINED_NO_DATA: "no-training-data",
    DECLINED_POLICY: "privacy-policy",
    DECLINED_SITE_ERROR: "site-error",
    SUPPRESSED: "suppressed",
    INSTALL_FAILED: "install-failed",
    FACTS_UNKNOWN: "facts-unknown",
    DECLINED_COHORT: "below-minimum-cohort",
    INVALID_INPUT: "invalid-server-input",
}
"""Reason codes of a site's reasoned refusals. ``suppressed`` answers an evaluate
message whose held-out cohort (by the site's noisy count) is below the site's minimum
cohort, ``below-minimum-cohort`` a train message whose training cohort is;
``install-failed`` the delivery of a bundle the site could not verify or write;
``facts-unknown`` a message that named shared facts by a digest the site does not hold."""


class ContractViolation(RuntimeError):
    """A reply would carry keys the contract does not allow; nothing is sent."""


def _canonical_facts(facts: Mapping[str, Any]) -> bytes:
    """Facts as canonical JSON (sorted keys, tuples as lists): the same facts give the same
    bytes on the server and at every site."""
    canonical = {key: list(v) if isinstance(v, tuple) else v for key, v in facts.items()}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode()


def facts_digest(facts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a model's shared facts in canonical JSON."""
    return hashlib.sha256(_canonical_facts(facts)).hexdigest()


def pack_facts(facts: Mapping[str, Any]) -> bytes:
    """Facts as zlib-compressed canonical JSON (an item catalogue shrinks about 4×)."""
    return zlib.compress(_canonical_facts(facts), 9)


def unpack_facts(packed: bytes) -> dict[str, Any]:
    """The facts :func:`pack_facts` packed.

    Raises:
        ValueError: not packed facts, or more than :data:`MAX_FACTS_BYTES` unpacked.
    """
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(packed, MAX_FACTS_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"packed facts exceed {MAX_FACTS_BYTES} bytes")
        facts = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"packed facts are unreadable: {error}") from None
    if not isinstance(facts, dict):
        raise ValueError("packed facts are not a mapping")
    return facts


def decline_reason(code: int, storefront: str, detail: str) -> str:
    """The reason text of a refusal: ``"<reason code> (<storefront>): <detail>"``."""
    return f"{DECLINE_REASONS[code]} ({storefront}): {detail}"


def storefront_of_reason(reason: str) -> str | None:
    """The storefront a refusal's reason names, if it follows :func:`decline_reason`."""
    code, _, rest = reason.partition(" (")
    if code not in DECLINE_REASONS.values() or "): " not in rest:
        return None
    return rest.split("): ", 1)[0]


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
