"""A site's whole answer to a train or evaluate message, for any registered model.

:func:`train_round` finds the site's data, checks the request against the site's own
privacy policy (kept in its ledger), splits the data by the model's protocol
(:class:`models.registry.FederatedModel`), plans DP for the run as the policy allows
(:func:`privacy.planning.plan_site_run`: a request for more ε is planned down, a request
without DP declined), reserves the round in the ledger, trains, confirms the DP steps,
and only then builds the reply — weights plus the fixed keys of :mod:`common.wire`.
:func:`evaluate_round` answers with the model's sums and counts over the site's held-out
customers, or ``suppressed`` when they are fewer than the policy's minimum cohort.

Every failure at a site is a reasoned refusal, never a crash of the round: missing or
unreadable data, input the site does not accept, a ledger that cannot be trusted, a spent
budget, a request the policy does not allow, a cohort below the minimum — each becomes an
error reply whose reason is ``"<reason code> (<storefront>): <detail>"``
(:func:`common.wire.decline_reason`), logged by the site in one line, and the server
carries on without the site. No reason quotes a count of the site's customers: the only
refusal that depends on them, the minimum cohort, compares a released (noisy) count and
does not say by how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from logging import WARNING
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore import log
from torch import nn

from clients import site_timing
from clients.facts_store import recall_facts, remember_facts
from clients.prepared_cache import ByteBudgetCache
from clients.prepared_store import load_or_prepare, prepared_file
from clients.server_input import (
    FactsOutsidePolicy,
    InvalidServerInput,
    check_facts,
    checked_module,
    planned_evaluations,
)
from clients.site_data import SiteDataError, SiteLocation, load_orders, locate_site, storefront_of
from clients.site_privacy import default_policy
from clients.site_releases import (
    COHORT,
    EVALUATION,
    CohortSizes,
    FactsChanged,
    cohort_sizes,
    evaluation_answer,
    planned_evaluation_segments,
)
from common import wire
from common.console_errors import withheld
from common.wire_encoding import (
    FLOAT32,
    EncodingError,
    check_encoding,
    decode_int8,
    encode_int8,
)
from models import schema
from models.registry import BUILTIN_MODELS, FederatedModel, SiteData, get_model
from models.training import LocalTraining, TrainingSettings, simulation_seed
from privacy.accountants import DPSegment
from privacy.ledger import (
    LEDGER_FILE,
    BudgetExceeded,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    ReleaseLimit,
    ledger_epsilon,
)
from privacy.planning import (
    PolicyDecline,
    RunGrant,
    accounting_delta,
    asks_for_dp,
    evaluation_budget,
    plan_site_run,
)
from privacy.policy import SitePolicy


class SiteRefusal(Exception):
    """The site does not answer this message; becomes an error reply with a reason."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def reasoned(
    answer: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """Turn every failure of ``answer`` into a refusal reply: known ones with their reason,
    anything else as ``site-error`` naming only the exception's type and place (its
    message may quote data)."""

    @wraps(answer)
    def answer_or_refuse(msg: Message, context: Context) -> Message:
        try:
            with site_timing.message(msg.metadata.message_type):
                return answer(msg, context)
        except SiteRefusal as refusal:
            code, detail = refusal.code, refusal.detail
        except Exception as error:  # a bug: reported by type and place only
            code, detail = wire.DECLINED_SITE_ERROR, f"unexpected {withheld(error)}"
        reason = wire.decline_reason(code, _storefront_label(context), detail)
        log(WARNING, "Refused the %s message: %s", msg.metadata.message_type, reason)
        return Message(Error(code, reason), reply_to=msg)

    return answer_or_refuse


class SharedFacts(NamedTuple):
    """A model's shared facts as a site uses them, and their digest."""

    values: dict[str, Any]
    digest: str


@dataclass(frozen=True)
class TrainingPlan:
    """The local training the server asked for in a train message's config."""

    model: str
    settings: TrainingSettings
    requested_epsilon: float
    """The ε the server asks this run to spend; the site's policy decides what it grants."""
    planned_rounds: int
    server_round: int
    proximal_mu: float
    """FedProx's μ; 0 unless the server runs FedProx."""
    update_encoding: str = FLOAT32
    """How the global weights arrive and the update leaves (:mod:`common.wire_encoding`)."""

    @classmethod
    def from_config(cls, config: ConfigRecord) -> TrainingPlan:
        """Read the plan from the train config (keys in :mod:`common.wire`).

        Raises:
            InvalidServerInput: a key is missing or a value is invalid.
        """
        try:
            plan = cls(
                model=str(config[wire.MODEL]),
                settings=TrainingSettings.from_config(config, defaults=None),
                requested_epsilon=float(config[wire.EPSILON_BUDGET]),
                planned_rounds=int(config[wire.PLANNED_ROUNDS]),
                server_round=int(config[wire.SERVER_ROUND]),
                proximal_mu=float(config.get(wire.PROXIMAL_MU, 0.0)),
                update_encoding=check_encoding(str(config.get(wire.UPDATE_ENCODING, FLOAT32))),
            )
        except (KeyError, TypeError, ValueError, EncodingError) as error:
            raise InvalidServerInput(f"the train config: {error}") from None
        if plan.planned_rounds < 1 or not math.isfinite(plan.proximal_mu) or plan.proximal_mu < 0:
            raise InvalidServerInput(
                "the train config: planned rounds must be >= 1 and the proximal μ finite, >= 0"
            )
        return plan


@dataclass(frozen=True)
class Checked:
    """A message's model, facts and global module after every check, with the site's data."""

    location: SiteLocation
    policy: SitePolicy
    model: FederatedModel
    facts: SharedFacts
    module: nn.Module
    received: dict[str, np.ndarray]
    data: SiteData
    storefront: str


def checked_message(msg: Message, context: Context, model_name: str, encoding: str) -> Checked:
    """What ``msg`` asks of this site, checked before anything is reserved
    (:mod:`clients.server_input`), and the site's data for the model.

    Raises:
        SiteRefusal: input the site does not accept, or data it cannot read.
    """
    location = _location(context)
    with site_timing.phase("policy"):
        policy = site_policy(location)
    model = _allowed_model(model_name, policy)
    facts = shared_facts(msg, model, location)
    try:
        check_facts(model, facts.values, policy)
        received = received_weights(msg, encoding)
        with site_timing.phase("train"):
            module = checked_module(model, facts.values, received)
    except FactsOutsidePolicy as error:
        raise SiteRefusal(wire.DECLINED_POLICY, str(error)) from None
    except InvalidServerInput as error:
        raise SiteRefusal(wire.INVALID_INPUT, str(error)) from None
    data, storefront = prepared_data(location, model, facts)
    return Checked(location, policy, model, facts, module, received, data, storefront)


@reasoned
def train_round(msg: Message, context: Context) -> Message:
    """A site's whole answer to a train message (see the module docstring)."""
    config = msg.content[wire.CONFIG]
    try:
        plan = TrainingPlan.from_config(config)
        checked = checked_message(msg, context, plan.model, plan.update_encoding)
        evaluations = planned_evaluations(config, checked.policy)
    except InvalidServerInput as error:
        raise SiteRefusal(wire.INVALID_INPUT, str(error)) from None
    model, location, policy = checked.model, checked.location, checked.policy
    run = str(context.run_id)
    seed = _simulation_seed(context, plan.server_round) if location.simulated else None
    rng = np.random.default_rng(seed)
    with (
        site_timing.phase("ledger"),
        _site_ledger(location) as ledger,
        _privacy_refusals(model.name),
    ):
        asks_for_dp(policy, model.name, plan.requested_epsilon)  # refused before any release
        cohort = _cohort(ledger, checked, run, plan.server_round, rng)
        if cohort.training < policy.min_cohort:
            raise SiteRefusal(
                wire.DECLINED_COHORT,
                f"{model.name}: the training cohort is below this site's minimum cohort of "
                f"{policy.min_cohort} customers; nothing trained",
            )
        n_customers = int(cohort.training)
        entries = ledger.entries(model.name)
        delta = accounting_delta(policy, [e for e in entries if e.run != run])
        # The run's releases, made and planned: its cohort sizes and all its evaluations
        # (not those already made: the same σ every round).
        counted = [e.segment for e in entries if e.run == run and e.purpose == COHORT]
        budget = evaluation_budget(policy, plan.requested_epsilon)
        releases = counted + planned_evaluation_segments(policy, model, evaluations, budget, delta)
        with site_timing.phase("plan"):
            grant = _grant(policy, plan, n_customers, entries, run, releases)
        reservation = None
        if grant.plan is not None:
            reservation = ledger.reserve(
                model.name,
                grant.plan.round_segment,
                budget_epsilon=grant.plan.epsilon_budget,
                delta=grant.plan.delta,
                max_grad_norm=plan.settings.max_grad_norm,
                accountant=grant.plan.accountant,
                server_round=plan.server_round,
                run=run,
            )

    local = LocalTraining(
        settings=plan.settings,
        proximal_mu=plan.proximal_mu,
        noise_multiplier=None if grant.plan is None else grant.plan.noise_multiplier,
        seed=seed,
        cohort_size=n_customers,
    )
    with site_timing.phase("train"):
        result = model.train(checked.module, checked.data.train, local)

    metrics = {
        wire.NUM_EXAMPLES: n_customers,
        wire.EPSILON: math.inf,
        wire.DELTA: 0.0,
        wire.DP_STEPS: 0,
        wire.NOISE_MULTIPLIER: 0.0,
    }
    if reservation is not None:
        # The update leaves the site only after its real steps are confirmed on disk.
        with site_timing.phase("ledger"), _site_ledger(location) as ledger:
            ledger.commit(reservation, steps_taken=result.dp_steps)
            status = ledger.budget_status(model.name, policy.cap_for(model.name), grant.plan.delta)
        metrics.update(
            {
                wire.EPSILON: status.epsilon_spent,
                wire.DELTA: grant.plan.delta,
                wire.DP_STEPS: status.total_steps,
                wire.NOISE_MULTIPLIER: grant.plan.noise_multiplier,
            }
        )
    wire.check_keys(f"{model.name} train reply", metrics, wire.TRAIN_METRIC_KEYS)
    with site_timing.phase("reply"):
        arrays = reply_arrays(checked.module, checked.received, plan.update_encoding, rng)
        return site_reply(msg, checked.storefront, metrics, {wire.ARRAYS: arrays}, note=grant.note)


@reasoned
def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's held-out customers: the model's queries
    answered through the release mechanism, or ``suppressed`` below the minimum cohort."""
    config = msg.content[wire.CONFIG]
    try:
        checked = checked_message(msg, context, str(config[wire.MODEL]), FLOAT32)
        evaluations = planned_evaluations(config, checked.policy)
        server_round = int(config.get(wire.SERVER_ROUND, 0))
        requested = float(config.get(wire.EPSILON_BUDGET, checked.policy.evaluation_epsilon))
    except (InvalidServerInput, KeyError, TypeError, ValueError) as error:
        raise SiteRefusal(wire.INVALID_INPUT, f"the evaluate config: {error}") from None
    model, policy = checked.model, checked.policy
    run = str(context.run_id)
    seed = _simulation_seed(context, server_round) if checked.location.simulated else None
    rng = np.random.default_rng(seed)
    with site_timing.phase("evaluate"), torch.no_grad():
        checked.module.eval()
        values = model.evaluation_values(checked.module, checked.data.evaluation)
    with _site_ledger(checked.location) as ledger, _privacy_refusals(model.name):
        cohort = _cohort(ledger, checked, run, server_round, rng)
        if cohort.held_out < policy.min_cohort or evaluations == 0:
            raise SiteRefusal(
                wire.SUPPRESSED,
                f"{model.name}: the held-out cohort is below this site's minimum cohort of "
                f"{policy.min_cohort} customers, or its policy allows no evaluation; nothing "
                "sent",
            )
        answer, noise = evaluation_answer(
            ledger,
            policy,
            model,
            values,
            evaluations=evaluations,
            budget=evaluation_budget(policy, requested),
            facts_digest=checked.facts.digest,
            run=run,
            server_round=server_round,
            rng=rng,
        )
        entries = ledger.entries(model.name)
    delta = accounting_delta(policy, entries)
    evaluated = [e for e in entries if e.run == run and e.purpose == EVALUATION]
    metrics = {
        **answer,
        wire.NUM_EXAMPLES: cohort.held_out,
        wire.NOISE_SD: noise,
        wire.NUM_EXAMPLES_NOISE_SD: policy.cohort_noise,
        wire.EPSILON: ledger_epsilon(entries, delta),
        wire.EVALUATION_EPSILON: ledger_epsilon(evaluated, delta),
    }
    # A model bug must not put undocumented values on the wire.
    wire.check_keys(f"{model.name} evaluate reply", metrics, model.evaluate_metric_keys)
    return site_reply(msg, checked.storefront, metrics, {})


def _cohort(
    ledger: PrivacyLedger, checked: Checked, run: str, server_round: int, rng: np.random.Generator
) -> CohortSizes:
    """The run's released cohort sizes for the checked message's model and facts."""
    return cohort_sizes(
        ledger,
        checked.policy,
        checked.model,
        checked.data,
        facts_digest=checked.facts.digest,
        run=run,
        server_round=server_round,
        rng=rng,
    )


@contextmanager
def _site_ledger(location: SiteLocation) -> Iterator[PrivacyLedger]:
    """The site's ledger, open; a ledger that cannot be trusted refuses."""
    try:
        with PrivacyLedger(location.ledger_dir / LEDGER_FILE) as ledger:
            yield ledger
    except LedgerError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None


@contextmanager
def _privacy_refusals(model: str) -> Iterator[None]:
    """The ledger's and the planner's refusals as the site's reasoned refusals."""
    try:
        yield
    except BudgetExceeded as error:
        raise SiteRefusal(wire.DECLINED_BUDGET_EXHAUSTED, str(error)) from None
    except ReleaseLimit as error:
        raise SiteRefusal(wire.DECLINED_POLICY, f"{model}: {error}") from None
    except PolicyDecline as decline:
        raise SiteRefusal(decline.code, str(decline).split(": ", 1)[1]) from None
    except FactsChanged as error:
        raise SiteRefusal(wire.INVALID_INPUT, str(error)) from None
    except ValueError as error:  # the policy fixes no δ
        raise SiteRefusal(wire.DECLINED_POLICY, f"{model}: {error}") from None


def site_policy(location: SiteLocation) -> SitePolicy:
    """The site's privacy policy from its ledger. A simulated site without one has the one
    ``prepare`` would write for its data (:func:`clients.site_privacy.default_policy`); a
    deployed site without one refuses (its data team sets it at ``prepare``).

    Raises:
        SiteRefusal: no policy (deployment), or a ledger that cannot be trusted.
    """
    path = location.ledger_dir / LEDGER_FILE
    try:
        with PrivacyLedger(path) as ledger:
            policy = ledger.policy()
    except LedgerError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None
    if policy is not None:
        return policy
    if location.simulated:  # the researcher plays the site: the policy its prepare writes
        return default_policy(load_orders(location, columns=[schema.CUSTOMER, schema.TIMESTAMP]))
    raise SiteRefusal(
        wire.DECLINED_POLICY,
        f"{path} holds no privacy policy; set one with `fedshop-site policy --data "
        f"{location.ledger_dir}` (`fedshop-site prepare` sets the defaults)",
    )


def _allowed_model(name: str, policy: SitePolicy) -> FederatedModel:
    """The model ``name`` if the policy lets the site train it (checked before import)."""
    allowed = policy.models or BUILTIN_MODELS
    if name not in allowed:
        raise SiteRefusal(
            wire.DECLINED_POLICY, f"this site's policy trains {list(allowed)}, not {name!r}"
        )
    try:
        return get_model(name)
    except ValueError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None


def _grant(
    policy: SitePolicy,
    plan: TrainingPlan,
    n_customers: int,
    entries: list[LedgerEntry],
    run: str,
    releases: list[DPSegment],
) -> RunGrant:
    """What the site's policy grants this run (see :func:`privacy.planning.plan_site_run`)."""
    return plan_site_run(
        policy,
        plan.model,
        requested_epsilon=plan.requested_epsilon,
        n_customers=n_customers,
        batch_size=plan.settings.batch_size,
        local_epochs=plan.settings.local_epochs,
        planned_rounds=plan.planned_rounds,
        earlier=[entry for entry in entries if entry.run != run],
        releases=releases,
    )


def shared_facts(msg: Message, model: FederatedModel, location: SiteLocation) -> SharedFacts:
    """The model's shared facts for ``msg``: those it carries (checked against their digest
    and kept, :mod:`clients.facts_store`), or those the site kept under the digest it names.

    Raises:
        SiteRefusal: facts that do not match their digest or lack a key the model needs
            (``site-error``); a digest the site holds no facts for (``facts-unknown``).
    """
    record = msg.content.config_records.get(wire.FACTS)
    carried = dict(record) if record is not None else {}
    named = str(carried.pop(wire.FACTS_DIGEST, ""))
    if wire.FACTS_PACKED in carried:
        try:
            carried = wire.unpack_facts(bytes(carried[wire.FACTS_PACKED]))
        except ValueError as error:
            raise SiteRefusal(wire.DECLINED_SITE_ERROR, f"{model.name}: {error}") from None
    if carried or not named:
        digest = wire.facts_digest(carried)
        if named and named != digest:
            raise SiteRefusal(
                wire.DECLINED_SITE_ERROR, f"the {model.name} shared facts do not match their digest"
            )
        if named:
            remember_facts(location.ledger_dir, digest, carried)
        facts = carried
    else:
        try:
            kept = recall_facts(location.ledger_dir, named)
        except ValueError as error:
            raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None
        if kept is None:
            raise SiteRefusal(
                wire.FACTS_UNKNOWN,
                f"no {model.name} shared facts kept under digest {named[:12]}; send them in full",
            )
        facts, digest = kept, named
    missing = [key for key in model.shared_fact_keys if key not in facts]
    if missing:
        raise SiteRefusal(
            wire.DECLINED_SITE_ERROR, f"the {model.name} message lacks the shared facts {missing}"
        )
    return SharedFacts({key: facts[key] for key in model.shared_fact_keys}, digest)


PREPARED_DATA_BUDGET_BYTES = 1 << 30
"""Memory a ClientApp process may keep of its sites' prepared data (estimated; 1 GiB).

A simulation worker serves many sites in turn: 1,000 synthetic storefronts of 50 customers
take ~40 MB of prepared data in all, the bundled storefronts a few MB each, so every site a
worker serves stays cached across rounds; a deployed site (one storefront) keeps its
data unless it alone exceeds the budget, and is then re-read per message as before."""

site_data_cache = ByteBudgetCache[tuple[SiteData, str]](PREPARED_DATA_BUDGET_BYTES)


def prepared_data(
    location: SiteLocation, model: FederatedModel, facts: SharedFacts
) -> tuple[SiteData, str]:
    """The site's data for ``model`` and its storefront name, cached per data version.

    A simulation process serves many messages of many sites, so each site's split is built
    once and kept across rounds (:data:`PREPARED_DATA_BUDGET_BYTES`); a process that has
    not built it yet loads it from the site's ledger directory when another process did
    (:mod:`clients.prepared_store`). The data version is the file's modification time and
    size: a new export is read again (and the old one dropped); changed shared facts (a new
    catalogue or cutoff) have a new digest, so a new key.

    Raises:
        SiteRefusal: the data cannot be read, or the model's protocol cannot use the facts
            (a protocol that finds no customer gives empty data, not a refusal).
    """
    path = location.orders_file
    try:
        stat = path.stat()
        version: tuple[int, int] = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (0, 0)  # missing: load_orders below refuses with the reason
    key = (location, model.name, facts.digest)

    def from_store() -> tuple[SiteData, str]:
        return load_or_prepare(
            prepared_file(location.ledger_dir, model.name),
            (str(location.orders_file), version, model.name, facts.digest),
            type(model).__module__,
            lambda: _read_and_prepare(location, model, facts.values),
            PREPARED_DATA_BUDGET_BYTES,
        )

    try:
        return site_data_cache.get(key, version, from_store)
    except SiteDataError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None
    except ValueError as error:  # the model's protocol refused the facts: its text may quote data
        raise SiteRefusal(
            wire.INVALID_INPUT,
            f"{model.name}: the protocol cannot use these facts ({withheld(error)})",
        ) from None


def _read_and_prepare(
    location: SiteLocation, model: FederatedModel, facts: dict[str, Any]
) -> tuple[SiteData, str]:
    with site_timing.phase("read"):
        orders = load_orders(location)
    with site_timing.phase("featurise"):
        data = model.site_data(orders, facts)
    return data, storefront_of(location, orders)


def _location(context: Context) -> SiteLocation:
    try:
        return locate_site(context.node_config, context.run_config)
    except SiteDataError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, str(error)) from None


def _storefront_label(context: Context) -> str:
    """The storefront a refusal names, as the site's replies name it: the node config's,
    else its data's (:func:`clients.site_data.storefront_of`), else its directory's."""
    try:
        location = locate_site(context.node_config, context.run_config)
        return storefront_of(location, load_orders(location, columns=[schema.STOREFRONT]))
    except SiteDataError as error:
        return error.storefront


def received_weights(msg: Message, encoding: str) -> dict[str, np.ndarray]:
    """The global weights ``msg`` carries, decoded if they travel 8-bit encoded.

    Raises:
        SiteRefusal: encoded arrays that cannot be decoded.
    """
    arrays = {name: array.numpy() for name, array in msg.content[wire.ARRAYS].items()}
    if encoding == FLOAT32:
        return arrays
    try:
        return decode_int8(arrays)
    except EncodingError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, f"global weights: {error}") from None


def reply_arrays(
    module: nn.Module,
    received: dict[str, np.ndarray],
    encoding: str,
    rng: np.random.Generator,
) -> ArrayRecord:
    """The train reply's arrays: the trained weights (float32), or under ``int8`` the update
    from the ``received`` weights, 8-bit with stochastic rounding (after the DP noise, so
    post-processing; :mod:`common.wire_encoding`).

    Raises:
        SiteRefusal: a non-finite update (nothing is sent).
    """
    trained = {name: value.detach().numpy() for name, value in module.state_dict().items()}
    if encoding == FLOAT32:
        return ArrayRecord({name: Array(value.copy()) for name, value in trained.items()})
    update = {name: trained[name] - received[name] for name in trained}
    try:
        encoded = encode_int8(update, rng)
    except EncodingError as error:
        raise SiteRefusal(wire.DECLINED_SITE_ERROR, f"update: {error}") from None
    return ArrayRecord({name: Array(value) for name, value in encoded.items()})


def site_reply(
    msg: Message, storefront: str, metrics: dict[str, Any], records: dict[str, Any], note: str = ""
) -> Message:
    """A site's reply to ``msg``: ``records``, the metrics and the ``site`` record (with the
    privacy ``note``, if the site planned the request down)."""
    site = {wire.STOREFRONT: storefront, wire.PRIVACY_NOTE: note}
    wire.check_keys("site record", site, wire.SITE_KEYS)
    content = RecordDict(
        {**records, wire.METRICS: MetricRecord(metrics), wire.SITE: ConfigRecord(site)}
    )
    return Message(content, reply_to=msg)


def _simulation_seed(context: Context, server_round: int) -> int:
    """Reproducible simulations: one seed per (simulated site, round) within a simulation
    seed (``simulation-seed``; sites are fewer than 1000, rounds fewer than 1000)."""
    site_round = 1000 * server_round + int(context.node_config["partition-id"])
    return 1_000_000 * simulation_seed(context.run_config) + site_round
