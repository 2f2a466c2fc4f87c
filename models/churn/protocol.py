"""The fixed churn protocol: cutoff, population, labels, features and the held-out customers.

docs/protocols.md fixes it so every number compares. Input: order lines as ingest leaves them
(product lines with price > 0, cancellations kept with ``is_return`` set).

- cutoff = last timestamp of the frame − 90 days;
- population: customers with a non-cancelled invoice at or before the cutoff;
- label: 1 (churned) if the customer has no non-cancelled invoice after the cutoff;
- features (:data:`FEATURES`) only from rows at or before the cutoff;
- held out: a fixed 20% of customers per storefront, stratified by label
  (:func:`holdout_mask`).

On the bundled data: 3,368 customers, 43.0% churn. Ingest stores timestamps in UTC and
the cutoff is taken on them (2011-09-10 12:50 UTC). Taken on the export's UK wall-clock
time it would fall an hour earlier (summer time): the population and every label stay
the same, recency and tenure shift by 1/24 day, and the 90-day recent-invoice window
changes for 7 customers; the reference numbers are reproduced on UTC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models import schema
from models.customers import customer_home_storefront

HORIZON = pd.Timedelta(days=90)
"""Length of the label window after the cutoff, and of the recent-activity feature window."""

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0

FEATURES: tuple[str, ...] = (
    "recency",
    "tenure",
    "frequency",
    "monetary",
    "distinct_items",
    "lines",
    "average_basket_value",
    "cancellations",
    "recent_invoices",
)
"""The nine RFM-style features, all counts or non-negative amounts:

- ``recency``: days from the last purchase invoice to the cutoff;
- ``tenure``: days from the first purchase invoice to the cutoff;
- ``frequency``: purchase invoices;
- ``monetary``: spend (quantity × unit price) over purchase lines;
- ``distinct_items``: distinct items bought;
- ``lines``: purchase lines;
- ``average_basket_value``: monetary / frequency;
- ``cancellations``: cancellation invoices;
- ``recent_invoices``: purchase invoices in the 90 days up to the cutoff.
"""


@dataclass(frozen=True)
class ChurnData:
    """The churn population with features, labels, storefronts and the fixed holdout.

    Every Series and the feature frame are indexed by customer token in the same
    (sorted) order.
    """

    cutoff: pd.Timestamp
    features: pd.DataFrame
    labels: pd.Series
    """1 = churned (no purchase invoice after the cutoff), int64."""
    storefront: pd.Series
    """Home storefront (:func:`models.customers.customer_home_storefront`)."""
    first_invoice: pd.Series
    """Key-independent name of each customer (:func:`first_invoices`)."""
    holdout: pd.Series
    """True for the held-out evaluation customers (:func:`holdout_mask`)."""

    @classmethod
    def empty(cls, cutoff: pd.Timestamp) -> ChurnData:
        """No customer at all (a site with nobody before the cutoff)."""
        nobody = pd.Index([], dtype=object, name=schema.CUSTOMER)
        return cls(
            cutoff=cutoff,
            features=pd.DataFrame(
                np.zeros((0, len(FEATURES))), index=nobody, columns=list(FEATURES)
            ),
            labels=pd.Series([], index=nobody, dtype=np.int64),
            storefront=pd.Series([], index=nobody, dtype=object),
            first_invoice=pd.Series([], index=nobody, dtype=object),
            holdout=pd.Series([], index=nobody, dtype=bool),
        )

    def part(self, held_out: bool) -> ChurnData:
        """The held-out customers (True) or the training customers (False)."""
        return self.subset(self.holdout.to_numpy() == held_out)

    def subset(self, keep: np.ndarray) -> ChurnData:
        """The customers where the boolean array ``keep`` (in customer order) is True."""
        return ChurnData(
            cutoff=self.cutoff,
            features=self.features[keep],
            labels=self.labels[keep],
            storefront=self.storefront[keep],
            first_invoice=self.first_invoice[keep],
            holdout=self.holdout[keep],
        )


def churn_cutoff(frame: pd.DataFrame) -> pd.Timestamp:
    """Last timestamp of the frame − 90 days."""
    if frame.empty:
        raise ValueError("no order lines to take a churn cutoff from")
    return frame[schema.TIMESTAMP].max() - HORIZON


def churn_features(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The nine :data:`FEATURES` of every customer with a purchase at or before the cutoff.

    Only rows at or before ``cutoff`` are read, so later rows cannot leak into a feature.

    Returns:
        float64 frame indexed by customer token (sorted), columns :data:`FEATURES`.
    """
    past = frame[frame[schema.TIMESTAMP] <= cutoff]
    is_return = past[schema.IS_RETURN].to_numpy(dtype=bool)
    purchases = past[~is_return]
    cancellations = past[is_return]
    by_customer = purchases.assign(
        spend=purchases[schema.QUANTITY] * purchases[schema.UNIT_PRICE]
    ).groupby(schema.CUSTOMER)
    first = by_customer[schema.TIMESTAMP].min()
    last = by_customer[schema.TIMESTAMP].max()
    frequency = by_customer[schema.ORDER].nunique()
    monetary = by_customer["spend"].sum()
    recent = purchases[purchases[schema.TIMESTAMP] > cutoff - HORIZON]
    features = pd.DataFrame(
        {
            "recency": (cutoff - last) / pd.Timedelta(days=1),
            "tenure": (cutoff - first) / pd.Timedelta(days=1),
            "frequency": frequency,
            "monetary": monetary,
            "distinct_items": by_customer[schema.ITEM].nunique(),
            "lines": by_customer.size(),
            "average_basket_value": monetary / frequency,
            "cancellations": cancellations.groupby(schema.CUSTOMER)[schema.ORDER].nunique(),
            "recent_invoices": recent.groupby(schema.CUSTOMER)[schema.ORDER].nunique(),
        }
    )
    # Customers who only cancelled before the cutoff are not in the population.
    features = features.loc[frequency.index].fillna(0.0).astype(np.float64)
    features.index.name = schema.CUSTOMER
    return features.sort_index()


def churn_labels(frame: pd.DataFrame, cutoff: pd.Timestamp, customers: pd.Index) -> pd.Series:
    """1 for each customer without a purchase (non-cancelled) row after the cutoff, else 0."""
    after = frame[(frame[schema.TIMESTAMP] > cutoff) & ~frame[schema.IS_RETURN].to_numpy(bool)]
    active = customers.isin(after[schema.CUSTOMER].unique())
    return pd.Series((~active).astype(np.int64), index=customers, name="churned")


def first_invoices(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    """Each customer's first purchase invoice at or before the cutoff, as
    ``"<order id>@<ISO timestamp>"`` (earliest timestamp, then lowest order id).

    It names a customer without their token, so it is the same under every site key.
    """
    purchases = frame[
        (frame[schema.TIMESTAMP] <= cutoff) & ~frame[schema.IS_RETURN].to_numpy(dtype=bool)
    ]
    first = purchases.sort_values([schema.CUSTOMER, schema.TIMESTAMP, schema.ORDER])
    first = first.drop_duplicates(schema.CUSTOMER).set_index(schema.CUSTOMER).sort_index()
    stamps = first[schema.TIMESTAMP].dt.tz_convert("UTC").map(pd.Timestamp.isoformat)
    return (first[schema.ORDER] + "@" + stamps).rename("first_invoice")


def holdout_mask(
    storefront: pd.Series,
    labels: pd.Series,
    anchors: pd.Series,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = HOLDOUT_SEED,
) -> pd.Series:
    """The fixed held-out customers: ``round(fraction · n)`` of each (storefront, label)
    stratum of n customers.

    Within a stratum customers are ranked by a seeded hash of their anchor (their first
    invoice, :func:`first_invoices`), so the choice depends only on the stratum's own
    customers and not on the pseudonymisation key: a site running this on its own
    customers picks exactly the customers a central run over all storefronts picks for
    it, and every ingest of the same export holds out the same customers.

    Args:
        storefront: customer token -> storefront.
        labels: customer token -> label, same index.
        anchors: customer token -> a string that identifies the customer within its
            export independently of the key, same index.
        fraction: share of each stratum held out.
        seed: changes the (still fixed) choice.

    Returns:
        Boolean Series on the same index, True = held out.
    """
    if not (storefront.index.equals(labels.index) and storefront.index.equals(anchors.index)):
        raise ValueError("storefront, labels and anchors must share one customer index")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    strata = pd.DataFrame(
        {
            "storefront": storefront.to_numpy(dtype=object),
            "label": labels.to_numpy(),
            "rank_key": [_seeded_hash(anchor, seed) for anchor in anchors],
        }
    )
    rank = strata.groupby(["storefront", "label"])["rank_key"].rank(method="first")
    size = strata.groupby(["storefront", "label"])["rank_key"].transform("size")
    # Round half up, so a stratum of 3 or more keeps at least one held-out customer.
    held_out = rank.to_numpy() <= np.floor(fraction * size.to_numpy() + 0.5)
    return pd.Series(held_out, index=storefront.index, name="holdout")


def churn_data(
    frame: pd.DataFrame,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = HOLDOUT_SEED,
    cutoff: pd.Timestamp | None = None,
) -> ChurnData:
    """Apply the protocol (module docstring) to order lines in the canonical schema.

    The storefront of a customer is their home storefront over all of the frame's rows
    (the storefront split's rule); pass a frame whose ``storefront`` column already holds
    the federated storefront (e.g. "Other") to stratify the holdout by it. ``cutoff``
    defaults to the frame's own (:func:`churn_cutoff`); a site that holds only part of
    the data passes the federation's shared cutoff so labels agree across sites.
    """
    if cutoff is None:
        cutoff = churn_cutoff(frame)
    features = churn_features(frame, cutoff)
    if features.empty:
        raise schema.NoCustomers(f"no customer has a purchase at or before the cutoff {cutoff}")
    labels = churn_labels(frame, cutoff, features.index)
    storefront = customer_home_storefront(frame).loc[features.index]
    anchors = first_invoices(frame, cutoff).loc[features.index]
    return ChurnData(
        cutoff=cutoff,
        features=features,
        labels=labels,
        storefront=storefront,
        first_invoice=anchors,
        holdout=holdout_mask(storefront, labels, anchors, fraction, seed),
    )


def _seeded_hash(anchor: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{anchor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
