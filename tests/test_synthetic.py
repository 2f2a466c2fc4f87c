"""The synthetic generator: canonical schema, determinism, and the retail behaviour
(skew, repeat buying, churn, returns) measured on the generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from models import schema
from simulations.synthetic import DEFAULT_START, generate_orders

# Real data per customer: ~90 order lines; catalogue ~3,700 items.
SIZES = dict(n_storefronts=8, n_customers=1500, n_items=3000, n_order_lines=135_000)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return generate_orders(**SIZES, seed=7)


def test_frame_has_the_canonical_columns_and_dtypes(orders: pd.DataFrame) -> None:
    assert tuple(orders.columns) == schema.COLUMNS
    canonical = schema.ARROW_SCHEMA.empty_table().to_pandas().dtypes
    pd.testing.assert_series_equal(orders.dtypes, canonical)
    # Converts to the Parquet schema (non-null columns) as it is.
    table = pa.Table.from_pandas(orders, schema=schema.ARROW_SCHEMA, preserve_index=False)
    assert table.schema.equals(schema.ARROW_SCHEMA)
    assert not orders.isna().any().any()
    assert len(orders) == SIZES["n_order_lines"]


def test_values_are_plausible(orders: pd.DataFrame) -> None:
    assert orders[schema.CUSTOMER].nunique() == SIZES["n_customers"]
    assert orders[schema.STOREFRONT].nunique() == SIZES["n_storefronts"]
    assert orders[schema.ITEM].nunique() <= SIZES["n_items"]
    assert orders[schema.CUSTOMER].str.fullmatch(r"[0-9a-f]{16}").all()
    assert (orders[schema.UNIT_PRICE] > 0).all()
    purchases = orders[~orders[schema.IS_RETURN]]
    assert (purchases[schema.QUANTITY] > 0).all()
    assert not purchases.duplicated([schema.ORDER, schema.ITEM]).any()
    end = DEFAULT_START + pd.Timedelta(days=365)
    assert orders[schema.TIMESTAMP].min() >= DEFAULT_START
    assert orders[schema.TIMESTAMP].max() < end
    assert orders[schema.TIMESTAMP].is_monotonic_increasing
    # An order belongs to one customer, one time and one storefront.
    per_order = orders.groupby(schema.ORDER)[
        [schema.CUSTOMER, schema.TIMESTAMP, schema.STOREFRONT]
    ].nunique()
    assert (per_order == 1).all().all()


def test_same_seed_same_frame_other_seed_differs() -> None:
    small = dict(n_storefronts=3, n_customers=200, n_items=100, n_order_lines=5000)
    first = generate_orders(**small, seed=3)
    pd.testing.assert_frame_equal(first, generate_orders(**small, seed=3))
    other = generate_orders(**small, seed=4)
    assert len(other) == len(first)
    assert not first[schema.CUSTOMER].isin(other[schema.CUSTOMER]).any()
    assert not first[schema.ITEM].equals(other[schema.ITEM])


def test_storefront_sizes_are_skewed(orders: pd.DataFrame) -> None:
    customers = orders.groupby(schema.STOREFRONT)[schema.CUSTOMER].nunique()
    customers = customers.sort_values(ascending=False)
    assert customers.iloc[0] / customers.sum() > 0.75
    assert customers.iloc[-1] < customers.iloc[1]
    # Every customer shops in exactly one storefront.
    assert (orders.groupby(schema.CUSTOMER)[schema.STOREFRONT].nunique() == 1).all()


def test_largest_share_sets_the_big_storefront_or_puts_it_on_the_zipf_curve() -> None:
    sizes = dict(n_storefronts=20, n_customers=4000, n_items=50, n_order_lines=12_000, seed=1)

    def customers(frame: pd.DataFrame) -> pd.Series:
        per_storefront = frame.groupby(schema.STOREFRONT)[schema.CUSTOMER].nunique()
        return per_storefront.sort_values(ascending=False)

    default = customers(generate_orders(**sizes))
    assert default.iloc[0] == pytest.approx(0.85 * 4000, abs=20)
    half = customers(generate_orders(**sizes, largest_share=0.5))
    assert half.iloc[0] == pytest.approx(0.5 * 4000, abs=20)
    zipf = customers(generate_orders(**sizes, largest_share=None))
    # One curve k^-1.2: the largest is about 2^1.2 = 2.3 times the second, and the
    # smallest storefronts are far larger than under the 85 % split.
    assert 1.9 < zipf.iloc[0] / zipf.iloc[1] < 2.7
    assert zipf.iloc[0] / zipf.sum() < 0.4
    assert zipf.iloc[-1] > 3 * default.iloc[-1]


def test_storefronts_favour_different_items(orders: pd.DataFrame) -> None:
    counts = orders.groupby([schema.STOREFRONT, schema.ITEM]).size().unstack(fill_value=0)
    top = counts.idxmax(axis=1)
    assert top.nunique() > 1


def _last_basket_hit_rates(orders: pd.DataFrame, k: int = 10) -> tuple[float, float]:
    """HR@k of global popularity and of each customer's own most-bought items on the
    last order of customers with at least two orders (the design's protocol)."""
    buys = orders[~orders[schema.IS_RETURN]]
    order_times = buys.drop_duplicates(schema.ORDER)[[schema.CUSTOMER, schema.ORDER]]
    last_order = order_times.groupby(schema.CUSTOMER)[schema.ORDER].last()
    n_orders = order_times.groupby(schema.CUSTOMER).size()
    last_order = last_order[n_orders >= 2]
    is_test = buys[schema.ORDER].isin(last_order)
    train, test = buys[~is_test], buys[is_test]
    popular = train.groupby(schema.ITEM)[schema.CUSTOMER].nunique()
    popular = popular.sort_values(ascending=False, kind="stable")
    top_popular = set(popular.index[:k])
    rank = pd.Series(np.arange(len(popular)), index=popular.index)
    own = train.groupby([schema.CUSTOMER, schema.ITEM])[schema.ORDER].nunique().reset_index()
    own["rank"] = own[schema.ITEM].map(rank)
    own = own.sort_values([schema.CUSTOMER, schema.ORDER, "rank"], ascending=[True, False, True])
    own_top = own.groupby(schema.CUSTOMER).head(k).groupby(schema.CUSTOMER)[schema.ITEM].agg(set)
    baskets = test.groupby(schema.CUSTOMER)[schema.ITEM].agg(set)
    popular_hits = np.mean([bool(b & top_popular) for b in baskets])
    own_hits = np.mean([bool(b & own_top.get(c, set())) for c, b in baskets.items()])
    return float(popular_hits), float(own_hits)


def test_customers_rebuy_their_own_favourites(orders: pd.DataFrame) -> None:
    popular_hit_rate, own_hit_rate = _last_basket_hit_rates(orders)
    # Real data: 0.39 vs 0.72; repeat buying must dominate popularity the same way.
    assert 0.2 < popular_hit_rate < 0.6
    assert own_hit_rate > 0.6
    assert own_hit_rate > popular_hit_rate + 0.2


def _churn_table(orders: pd.DataFrame) -> pd.DataFrame:
    """The design's 90-day churn label with recency and frequency at the cutoff."""
    buys = orders[~orders[schema.IS_RETURN]]
    cutoff = orders[schema.TIMESTAMP].max() - pd.Timedelta(days=90)
    before = buys[buys[schema.TIMESTAMP] <= cutoff].groupby(schema.CUSTOMER)
    table = pd.DataFrame(
        {
            "recency": (cutoff - before[schema.TIMESTAMP].max()).dt.days,
            "frequency": before[schema.ORDER].nunique(),
        }
    )
    after = buys.loc[buys[schema.TIMESTAMP] > cutoff, schema.CUSTOMER]
    table["churned"] = ~table.index.isin(after)
    return table


def test_churners_stop_early_and_recency_predicts_churn(orders: pd.DataFrame) -> None:
    table = _churn_table(orders)
    assert 0.25 < table["churned"].mean() < 0.7
    # Some churners were active buyers who stopped well before the cutoff.
    loyal_then_gone = table[table["churned"] & (table["frequency"] >= 3)]
    assert (loyal_then_gone["recency"] > 60).sum() >= 20
    assert roc_auc_score(table["churned"], table["recency"]) > 0.65
    assert roc_auc_score(table["churned"], -table["frequency"]) > 0.55


def test_churn_rate_controls_churn() -> None:
    small = dict(n_storefronts=2, n_customers=1000, n_items=200, n_order_lines=30_000)
    low = _churn_table(generate_orders(**small, churn_rate=0.0))["churned"].mean()
    high = _churn_table(generate_orders(**small, churn_rate=0.9))["churned"].mean()
    assert high > low + 0.2


def test_returns_are_flagged_negative_and_follow_a_purchase(orders: pd.DataFrame) -> None:
    returns = orders[orders[schema.IS_RETURN]]
    assert len(returns) == round(0.02 * len(orders))
    assert (returns[schema.QUANTITY] < 0).all()
    assert returns[schema.ORDER].str.startswith("C").all()
    bought = orders[~orders[schema.IS_RETURN]].set_index([schema.ORDER, schema.ITEM])
    original = bought.loc[
        list(zip(returns[schema.ORDER].str[1:], returns[schema.ITEM], strict=True))
    ]
    assert (original[schema.CUSTOMER].to_numpy() == returns[schema.CUSTOMER].to_numpy()).all()
    assert (original[schema.TIMESTAMP].to_numpy() <= returns[schema.TIMESTAMP].to_numpy()).all()
    assert (-returns[schema.QUANTITY].to_numpy() <= original[schema.QUANTITY].to_numpy()).all()
    none = generate_orders(n_storefronts=1, n_customers=50, n_items=20, return_rate=0.0)
    assert not none[schema.IS_RETURN].any()


def test_default_size_and_tiny_catalogue() -> None:
    frame = generate_orders(n_storefronts=2, n_customers=30, n_items=4)
    assert len(frame) == 90 * 30
    # Baskets hold at most half the catalogue, without repeated items.
    buys = frame[~frame[schema.IS_RETURN]]
    assert buys.groupby(schema.ORDER).size().max() <= 2
    assert not buys.duplicated([schema.ORDER, schema.ITEM]).any()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(n_storefronts=0, n_customers=5, n_items=5), "n_storefronts"),
        (dict(n_storefronts=6, n_customers=5, n_items=5), "n_customers"),
        (dict(n_storefronts=1, n_customers=5, n_items=1), "n_items"),
        (dict(n_storefronts=1, n_customers=50, n_items=5, n_order_lines=40), "n_order_lines"),
        (dict(n_storefronts=1, n_customers=5, n_items=5, churn_rate=1.0), "churn_rate"),
        (dict(n_storefronts=1, n_customers=5, n_items=5, return_rate=-0.1), "return_rate"),
        (dict(n_storefronts=2, n_customers=5, n_items=5, largest_share=1.0), "largest_share"),
    ],
)
def test_inconsistent_arguments_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_orders(**arguments)
