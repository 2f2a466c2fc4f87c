"""How a storefront uses a model's output: :class:`SiteUse` (its command and API resource)
and :class:`SiteScores` (every customer's answer, computed once).

A model a site can score with declares its use (``FederatedModel.site_use``) and builds
its :class:`SiteScores` from the global module and the site's orders
(``FederatedModel.site_scores``). The site's command line and its HTTP API are built from
these declarations alone, so they name no model: ``fedshop-site <command>`` writes
:meth:`SiteScores.table` or prints :meth:`SiteScores.answer`, and ``fedshop-site serve``
answers ``GET /v1/customers/{id}/<resource>`` (and ``GET /v1/<resource>?top=N`` for a
model that ranks customers) from memory.

Light on purpose (no torch): the command line declares one subcommand per use of
:func:`builtin_site_uses` without importing the models.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models import BUILTIN_MODELS

if TYPE_CHECKING:
    import pandas as pd

MAX_ITEMS = 100
"""The longest list a site asks for per customer (``k``); answers are computed this long."""


@dataclass(frozen=True)
class SiteUse:
    """One model's output as a storefront uses it."""

    model: str
    """The model's registry name."""
    command: str
    """The ``fedshop-site`` subcommand that scores the site's customers."""
    resource: str
    """The API path segment: ``/v1/customers/{id}/<resource>``."""
    summary: str
    """One line for ``--help`` and the API docs."""
    default_items: int | None = None
    """For a list of items per customer: its default length ``k`` (at most
    :data:`MAX_ITEMS`); None when a customer's answer is one record."""
    ranks_customers: bool = False
    """The table is a ranking of customers: ``--top N`` and ``GET /v1/<resource>?top=N``."""


def builtin_site_uses() -> tuple[SiteUse, ...]:
    """The uses of the built-in models that have one, in registry order, each read from its
    package's light ``SITE_USE`` (:data:`models.BUILTIN_MODELS`)."""
    packages = (importlib.import_module(f"models.{name}") for name in BUILTIN_MODELS)
    return tuple(use for package in packages if (use := getattr(package, "SITE_USE", None)))


class NoAnswer(LookupError):
    """The model has no answer for this customer; ``str()`` says why (never an id)."""


UNKNOWN_CUSTOMER = "unknown customer: no orders under this id at this storefront"


class SiteScores(ABC):
    """A model's output for every customer of one site, computed once; answers come from
    memory. Customers are pseudonymous tokens."""

    @abstractmethod
    def answer(self, customer: str, items: int | None = None) -> dict[str, Any]:
        """The JSON-ready answer for one customer (``items``: list length, for a use with
        ``default_items``).

        Raises:
            NoAnswer: the customer is not in the site's data, or has nothing to score.
        """

    @abstractmethod
    def table(self, items: int | None = None) -> pd.DataFrame:
        """Every customer's answer as rows keyed by pseudonym (column ``customer``), in the
        model's order (a ranking when the use ``ranks_customers``)."""
