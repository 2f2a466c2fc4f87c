"""The next-basket validation protocol: the test protocol applied once more, to what
remains when the test invoices are gone.

Settings (learning rate, clipping norm, ``target_window``, ...) are chosen on validation,
never on test, so a reported test score is not tuned on the test baskets. The validation
protocol is :func:`models.recommender.protocol.split_next_basket` applied to the order lines
without any test invoice (:func:`without_test_invoices`):

- every test customer with at least three invoices has the distinct items of their
  second-to-last invoice (the last one left) as validation basket;
- a test customer with exactly two invoices keeps their first invoice as training data
  (nothing earlier could predict it);
- training rows, home storefronts and the catalogue to rank all come from the rows that
  remain: no line of a test invoice reaches validation features, examples or item bias,
  and an item bought only in test baskets is not in the validation catalogue.

Because the protocol is per customer and row-wise, a site that drops its own test invoices
and applies the test protocol gets exactly its part of this split: federated tuning hands
the sites :func:`without_test_invoices` of their orders and changes nothing else.
"""

from __future__ import annotations

import pandas as pd

from models import schema
from models.recommender.protocol import (
    NextBasketSplit,
    clean_purchases,
    last_invoices,
    split_next_basket,
)


def without_test_invoices(frame: pd.DataFrame) -> pd.DataFrame:
    """Order lines (canonical schema) without any line of a test invoice: every row whose
    (customer, order id) is a test customer's last purchase invoice is dropped, its
    non-product lines included (fresh index)."""
    tested = pd.MultiIndex.from_frame(last_invoices(clean_purchases(frame)))
    in_test_invoice = pd.MultiIndex.from_frame(frame[[schema.CUSTOMER, schema.ORDER]]).isin(tested)
    return frame[~in_test_invoice].reset_index(drop=True)


def split_next_basket_validation(frame: pd.DataFrame) -> NextBasketSplit:
    """The validation split (module docstring) of order lines in the canonical schema."""
    return split_next_basket(without_test_invoices(frame))
