"""Seeded synthetic order lines in the canonical schema, for tests and scale runs.

The generator imitates what makes the bundled UCI Online Retail data hard and
interesting, so that code developed on synthetic data behaves the same on real data:

* **skewed storefronts** — one storefront holds most customers (like the UK), the
  rest follow a Zipf tail; with ``largest_share=None`` every storefront, the largest
  included, is on one Zipf curve (a few large, many small: the shape of a federation of
  hundreds of storefronts, where one site with 85 % of the customers would be the whole
  federation);
* **per-storefront popularity** — global item popularity is Zipf-like and every
  storefront perturbs it with its own log-normal noise;
* **repeat buying** — every customer has a small set of favourite items drawn from
  their storefront's popularity and re-buys them with a personal probability, so a
  customer's own most-bought items predict the next basket far better than
  popularity does;
* **a churn process** — a customer is active from their first order until a
  lifetime drawn with a constant hazard, ordering as a Poisson process in between,
  so recency and frequency predict a 90-day churn label;
* log-normal item prices, baskets of varying size, and returns (cancellation orders
  ``C<order>`` with negative quantities) flagged in ``is_return``.

Everything is vectorised numpy; one ``numpy.random.Generator`` seeded with ``seed``
drives every draw, so the same arguments give an identical frame.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from models import schema
from simulations.errors import CommandError
from simulations.progress import Progress
from simulations.storefronts import prepare_storefronts

DEFAULT_START = datetime(2010, 12, 1, tzinfo=UTC)
"""First possible order time (the bundled data starts on 2010-12-01)."""

DEFAULT_LINES_PER_CUSTOMER = 90
"""Order lines per customer when ``n_order_lines`` is not given (real data: ~91)."""

ORDERS_PER_ACTIVE_YEAR = 5.0
"""Median orders per year of a customer while active; the number of orders follows
from it and basket sizes from ``n_order_lines`` (real data: ~4.3 orders per customer)."""

LARGEST_STOREFRONT_SHARE = 0.85
"""Share of customers in the largest storefront (real data: the UK has 90%)."""

STOREFRONT_TAIL_EXPONENT = 1.2
"""Zipf exponent of the sizes of the other storefronts."""

ITEM_POPULARITY_EXPONENT = 0.4
"""Zipf exponent of global item popularity."""

STOREFRONT_POPULARITY_NOISE = 1.0
"""Standard deviation of the per-storefront log-normal perturbation of popularity."""

FAVOURITES_MEAN = 12
"""Mean size of a customer's set of favourite items."""

REPEAT_PROBABILITY_BETA = (2.5, 2.5)
"""Beta(a, b) of the per-customer probability that a line re-buys a favourite."""

PURCHASE_RATE_SIGMA = 1.1
"""Log-normal spread of customers' order rates (many one-off buyers, a few wholesalers)."""

PRICE_LOG_MEAN, PRICE_LOG_SIGMA = 1.0, 0.9
"""Log-normal base price per item (median ~2.7, like the real catalogue)."""

RETURN_DELAY_DAYS = 10.0
"""Mean days between an order and its return."""

_MICROS_PER_DAY = 86_400 * 1_000_000
_ORDER_NUMBER_BASE = 500_000


def generate_orders(
    *,
    n_storefronts: int,
    n_customers: int,
    n_items: int,
    n_order_lines: int | None = None,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    days: int = 365,
    churn_rate: float = 0.4,
    return_rate: float = 0.02,
    largest_share: float | None = LARGEST_STOREFRONT_SHARE,
) -> pd.DataFrame:
    """Generate order lines in the canonical schema (``models.schema``).

    Args:
        n_storefronts: number of storefronts; storefront ``0`` is the big one and every
            storefront gets at least one customer.
        n_customers: number of distinct customers (each has at least one order).
        n_items: catalogue size.
        n_order_lines: exact number of rows, returns included; default
            ``DEFAULT_LINES_PER_CUSTOMER * n_customers``.
        seed: seed of the only random generator used; same arguments, same frame.
        start: earliest order time (timezone-aware).
        days: length of the simulated period; every row falls in ``[start, start+days)``.
        churn_rate: probability that a customer stops buying within 365 days of their
            first order (constant hazard ``-ln(1 - churn_rate) / 365`` per day).
        return_rate: share of rows that are return lines (``is_return``).
        largest_share: share of customers in storefront ``0``, the others on the Zipf
            tail; None: storefront ``0`` is the head of the same Zipf curve.

    Returns:
        A frame with exactly ``models.schema.COLUMNS`` and their canonical dtypes,
        sorted by timestamp and order id.

    Raises:
        ValueError: if the sizes or rates are inconsistent.
    """
    _check_arguments(n_storefronts, n_customers, n_items, n_order_lines, start, days)
    if not 0.0 <= churn_rate < 1.0:
        raise ValueError(f"churn_rate must be in [0, 1), got {churn_rate}")
    if not 0.0 <= return_rate < 0.5:
        raise ValueError(f"return_rate must be in [0, 0.5), got {return_rate}")
    if largest_share is not None and not 0.0 < largest_share < 1.0:
        raise ValueError(f"largest_share must be in (0, 1) or None, got {largest_share}")
    total_lines = n_order_lines or DEFAULT_LINES_PER_CUSTOMER * n_customers
    n_return_lines = round(return_rate * total_lines)
    n_purchase_lines = total_lines - n_return_lines
    if n_purchase_lines < n_customers:
        raise ValueError(
            f"n_order_lines={total_lines} leaves {n_purchase_lines} purchase lines, "
            f"fewer than n_customers={n_customers} (every customer orders at least once)"
        )

    rng = np.random.default_rng(seed)
    customers = _draw_customers(rng, n_storefronts, n_customers, days, churn_rate, largest_share)
    basket_cap = max(1, n_items // 2)
    orders = _draw_orders(rng, customers, n_purchase_lines, basket_cap)
    lines = _draw_purchase_lines(rng, customers, orders, n_storefronts, n_items)
    returns = _draw_returns(rng, customers, orders, lines, n_return_lines, days)
    return _to_frame(rng, customers, orders, lines, returns, n_storefronts, n_items, start)


def _check_arguments(
    n_storefronts: int,
    n_customers: int,
    n_items: int,
    n_order_lines: int | None,
    start: datetime,
    days: int,
) -> None:
    if n_storefronts < 1:
        raise ValueError(f"n_storefronts must be at least 1, got {n_storefronts}")
    if n_customers < n_storefronts:
        raise ValueError(
            f"n_customers={n_customers} must be at least n_storefronts={n_storefronts}"
        )
    if n_items < 2:
        raise ValueError(f"n_items must be at least 2, got {n_items}")
    if n_order_lines is not None and n_order_lines < 1:
        raise ValueError(f"n_order_lines must be positive, got {n_order_lines}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")


def _allocate(total: int, shares: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``shares`` (largest remainder)."""
    exact = total * shares / shares.sum()
    parts = np.floor(exact).astype(np.int64)
    remainder = total - parts.sum()
    parts[np.argsort(parts - exact, kind="stable")[:remainder]] += 1
    return parts


def _draw_customers(
    rng: np.random.Generator,
    n_storefronts: int,
    n_customers: int,
    days: int,
    churn_rate: float,
    largest_share: float | None,
) -> dict[str, np.ndarray]:
    """Per-customer attributes; customers are numbered contiguously by storefront."""
    if largest_share is None:
        shares = np.arange(1, n_storefronts + 1, dtype=np.float64) ** -STOREFRONT_TAIL_EXPONENT
    else:
        shares = np.arange(1, n_storefronts, dtype=np.float64) ** -STOREFRONT_TAIL_EXPONENT
        if n_storefronts > 1:
            shares = (1 - largest_share) * shares / shares.sum()
        shares = np.concatenate([[1.0 if n_storefronts == 1 else largest_share], shares])
    sizes = 1 + _allocate(n_customers - n_storefronts, shares)
    # The shop already has a customer base when the period starts, so first orders
    # concentrate early (density decreasing over the period).
    first = days * rng.random(n_customers) ** 1.5
    hazard = -np.log1p(-churn_rate) / 365.0
    lifetime = rng.exponential(1.0 / hazard, n_customers) if hazard > 0 else np.inf
    a, b = REPEAT_PROBABILITY_BETA
    return {
        "storefront": np.repeat(np.arange(n_storefronts), sizes),
        "first": first,
        "last": np.minimum(first + lifetime, days),
        "rate": rng.lognormal(
            np.log(ORDERS_PER_ACTIVE_YEAR / 365), PURCHASE_RATE_SIGMA, n_customers
        ),
        "basket_scale": rng.lognormal(0.0, 0.5, n_customers),
        "quantity_scale": rng.lognormal(np.log(4.0), 0.8, n_customers),
        "n_favourites": 1 + rng.poisson(FAVOURITES_MEAN - 1, n_customers),
        "repeat_probability": rng.beta(a, b, n_customers),
        "return_propensity": rng.gamma(0.5, 2.0, n_customers),
    }


def _draw_orders(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    n_purchase_lines: int,
    basket_cap: int,
) -> dict[str, np.ndarray]:
    """Orders per customer (Poisson process over the active period) and basket sizes."""
    n_customers = customers["first"].size
    # Each customer's first order opens their active period; the expected number of
    # further orders is rate x active time. The total is kept within what the line
    # budget allows: at least one line per order, at most ``basket_cap``.
    active = customers["last"] - customers["first"]
    weight = customers["rate"] * active
    n_orders = int(np.clip(round(n_customers + weight.sum()), n_customers, n_purchase_lines))
    n_orders = max(n_orders, -(-n_purchase_lines // basket_cap))
    weight += 1e-9  # customers with an empty active period keep a positive weight
    per_customer = 1 + rng.multinomial(n_orders - n_customers, weight / weight.sum())
    customer = np.repeat(np.arange(n_customers), per_customer)
    offset = rng.random(n_orders)
    offset[np.cumsum(per_customer) - per_customer] = 0.0
    time = customers["first"][customer] + offset * active[customer]

    basket_weight = rng.gamma(0.8, 1.0, n_orders) * customers["basket_scale"][customer]
    size = 1 + rng.multinomial(n_purchase_lines - n_orders, basket_weight / basket_weight.sum())
    # Spread lines above the cap onto baskets with room, so no basket exceeds half the
    # catalogue and de-duplication inside a basket always finds free items.
    while (overflow := int(np.maximum(size - basket_cap, 0).sum())) > 0:
        size = np.minimum(size, basket_cap)
        room = (basket_cap - size).astype(np.float64)
        size += rng.multinomial(overflow, room / room.sum())
    return {"customer": customer, "time": time, "size": size}


def _storefront_popularity(
    rng: np.random.Generator, n_storefronts: int, n_items: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Global popularity and one perturbed cumulative distribution per storefront."""
    rank = rng.permutation(n_items)
    log_popularity = -ITEM_POPULARITY_EXPONENT * np.log1p(rank)
    global_popularity = np.exp(log_popularity)
    global_popularity /= global_popularity.sum()
    cdfs = []
    for _ in range(n_storefronts):
        perturbed = np.exp(log_popularity + rng.normal(0.0, STOREFRONT_POPULARITY_NOISE, n_items))
        cdf = np.cumsum(perturbed)
        cdfs.append(cdf / cdf[-1])
    return global_popularity, cdfs


def _sample(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), cdf.size - 1)


def _draw_purchase_lines(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    orders: dict[str, np.ndarray],
    n_storefronts: int,
    n_items: int,
) -> dict[str, np.ndarray]:
    """Items, quantities and prices of purchase lines; no item twice in one order."""
    order = np.repeat(np.arange(orders["size"].size), orders["size"])
    customer = orders["customer"][order]
    global_popularity, cdfs = _storefront_popularity(rng, n_storefronts, n_items)

    n_favourites = customers["n_favourites"]
    favourite_start = np.cumsum(n_favourites) - n_favourites
    favourites = np.empty(n_favourites.sum(), dtype=np.int64)
    # Customers and, through them, lines are contiguous by storefront.
    customer_bounds = np.searchsorted(customers["storefront"], np.arange(n_storefronts + 1))
    favourite_bounds = np.append(favourite_start, favourites.size)[customer_bounds]
    line_bounds = np.searchsorted(customer, customer_bounds)
    item = np.empty(order.size, dtype=np.int64)
    for s, cdf in enumerate(cdfs):
        lo, hi = favourite_bounds[s], favourite_bounds[s + 1]
        favourites[lo:hi] = _sample(rng, cdf, hi - lo)
        lo, hi = line_bounds[s], line_bounds[s + 1]
        item[lo:hi] = _sample(rng, cdf, hi - lo)

    # A line re-buys a favourite with the customer's repeat probability; favourites
    # early in the customer's list are picked more often (u^2 skews the index).
    repeat = rng.random(order.size) < customers["repeat_probability"][customer]
    pick = np.floor(n_favourites[customer] * rng.random(order.size) ** 2).astype(np.int64)
    item[repeat] = favourites[favourite_start[customer] + pick][repeat]
    _deduplicate_baskets(rng, order, item, global_popularity)

    base_price = np.maximum(
        np.round(rng.lognormal(PRICE_LOG_MEAN, PRICE_LOG_SIGMA, n_items), 2), 0.01
    )
    quantity = np.maximum(
        1, np.rint(customers["quantity_scale"][customer] * rng.lognormal(0, 0.6, order.size))
    ).astype(np.int64)
    # Larger quantities get a wholesale discount, as in the real price list.
    discount = np.where(quantity >= 12, 0.85, 1.0)
    price = np.maximum(np.round(base_price[item] * discount, 2), 0.01)
    return {"order": order, "item": item, "quantity": quantity, "price": price}


def _deduplicate_baskets(
    rng: np.random.Generator, order: np.ndarray, item: np.ndarray, popularity: np.ndarray
) -> None:
    """Redraw, in place, lines that repeat an item already in their order."""
    n_items = popularity.size
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    rounds = 0
    while True:
        key = order * n_items + item
        sorted_index = np.argsort(key, kind="stable")
        sorted_key = key[sorted_index]
        duplicate = sorted_index[1:][sorted_key[1:] == sorted_key[:-1]]
        if duplicate.size == 0:
            return
        # Popularity first (realistic); then uniform, which converges quickly because
        # a basket holds at most half the catalogue.
        if rounds < 5:
            item[duplicate] = _sample(rng, cdf, duplicate.size)
        else:
            item[duplicate] = rng.integers(0, n_items, duplicate.size)
        rounds += 1


def _draw_returns(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    orders: dict[str, np.ndarray],
    lines: dict[str, np.ndarray],
    n_return_lines: int,
    days: int,
) -> dict[str, np.ndarray]:
    """Return lines: part of a purchased line sent back after a delay."""
    n_lines = lines["order"].size
    weight = customers["return_propensity"][orders["customer"][lines["order"]]]
    # Weighted sampling without replacement: the k smallest Exp(1)/w keys.
    keys = rng.exponential(1.0, n_lines) / np.maximum(weight, 1e-12)
    if n_return_lines == 0:
        returned = np.empty(0, dtype=np.int64)
    else:
        returned = np.sort(np.argpartition(keys, n_return_lines - 1)[:n_return_lines])
    order = lines["order"][returned]
    # One return order per original order, so all its returned lines share a time.
    order_time = orders["time"]
    delay = np.minimum(
        rng.exponential(RETURN_DELAY_DAYS, order_time.size),
        (days - order_time) * rng.random(order_time.size),
    )
    quantity = -(1 + np.floor(rng.random(returned.size) * lines["quantity"][returned]))
    return {
        "line": returned,
        "time": (order_time + delay)[order],
        "quantity": quantity.astype(np.int64),
    }


def _tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct opaque 16-hex-digit tokens (a keyed splitmix64 bijection)."""
    z = np.arange(n, dtype=np.uint64) + np.uint64(rng.integers(0, 2**63))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.frombuffer(z.astype(">u8").tobytes().hex().encode(), dtype="S16").astype(str)


def _to_frame(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    orders: dict[str, np.ndarray],
    lines: dict[str, np.ndarray],
    returns: dict[str, np.ndarray],
    n_storefronts: int,
    n_items: int,
    start: datetime,
) -> pd.DataFrame:
    n_orders = orders["time"].size
    # Order numbers increase with time, like invoice numbers.
    order_number = np.empty(n_orders, dtype=np.int64)
    order_number[np.argsort(orders["time"], kind="stable")] = np.arange(n_orders)
    order_ids = (_ORDER_NUMBER_BASE + order_number).astype(str)
    returned = returns["line"]
    line_order = lines["order"][returned]

    customer = orders["customer"][np.concatenate([lines["order"], line_order])]
    order_index = np.concatenate([lines["order"], n_orders + line_order])
    order_names = np.concatenate([order_ids, np.char.add("C", order_ids)])
    item = np.concatenate([lines["item"], lines["item"][returned]])
    days = np.concatenate([orders["time"][lines["order"]], returns["time"]])
    offset = (days * _MICROS_PER_DAY).astype(np.int64)
    offset -= offset % 1_000_000  # whole seconds, like shop exports
    start_micros = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "us")
    micros = start_micros.astype(np.int64) + offset

    item_base = 10 ** max(4, len(str(n_items)))
    width = len(str(n_storefronts - 1))
    storefront_names = [f"storefront-{s:0{width}d}" for s in range(n_storefronts)]

    def coded(codes: np.ndarray, names) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names)).dictionary_decode()

    # Rows in time order, then by order number. The integer codes are put in that order
    # before the string columns are decoded from them, so the strings of millions of lines
    # exist once (sorting the decoded table copied them: 7.5 GiB at 20M lines).
    order_rank = np.concatenate([order_number, n_orders + order_number])[order_index]
    rows = np.lexsort((order_rank, micros))
    del order_rank, days, offset
    customer, order_index, item = customer[rows], order_index[rows], item[rows]
    table = pa.Table.from_arrays(
        [
            coded(customer, _tokens(rng, customers["first"].size)),
            coded(order_index, order_names),
            coded(item, (item_base + np.arange(n_items)).astype(str)),
            pa.array(np.concatenate([lines["quantity"], returns["quantity"]])[rows]),
            pa.array(np.concatenate([lines["price"], lines["price"][returned]])[rows]),
            pa.array(micros[rows], type=pa.timestamp("us", tz="UTC")),
            coded(customers["storefront"][customer], storefront_names),
            pa.array(rows >= lines["order"].size),
        ],
        schema=schema.ARROW_SCHEMA,
    )
    return table.to_pandas(self_destruct=True)


ZIPF = "zipf"
"""``--largest-share`` value that puts the largest storefront on the others' Zipf curve."""


def write_synthetic_split(
    out: Path,
    *,
    storefronts: int,
    customers: int,
    items: int,
    order_lines: int | None,
    seed: int,
    progress: Progress,
    largest: float | None = LARGEST_STOREFRONT_SHARE,
) -> pd.DataFrame:
    """Generate seeded synthetic order lines and write their storefront split to ``out``
    (``largest``: the largest storefront's share of customers, None for the Zipf curve)."""
    with progress.step("generate synthetic order lines"):
        try:
            frame = generate_orders(
                n_storefronts=storefronts,
                n_customers=customers,
                n_items=items,
                n_order_lines=order_lines,
                seed=seed,
                largest_share=largest,
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
    metadata = {
        "source": "synthetic",
        "seed": seed,
        "storefronts": storefronts,
        "customers": customers,
        "items": items,
        "order-lines": len(frame),
        "largest-share": ZIPF if largest is None else largest,
    }
    with progress.step(f"write the split to {out}"):
        summary = prepare_storefronts(frame, out, metadata=metadata)
    del frame
    # Arrow's allocator keeps freed pages for reuse: give the lines' memory back to the
    # system, since `run` keeps this process alive through the whole federation (2.5 GiB
    # held after 20M lines otherwise).
    pa.default_memory_pool().release_unused()
    return summary
