"""Privacy accountants: ε of the DP-SGD steps a site ran, by a named analysis.

:func:`create_accountant` returns the accountant of a name recorded in the ledger, in the
manner of Opacus's ``create_accountant``. :data:`DEFAULT_ACCOUNTANT` plans new training.
"""

from __future__ import annotations

from privacy.accountants.base import Accountant, DPSegment
from privacy.accountants.pld import PLDAccountant
from privacy.accountants.rdp import RDPAccountant

ACCOUNTANTS: dict[str, type[Accountant]] = {
    RDPAccountant.name: RDPAccountant,
    PLDAccountant.name: PLDAccountant,
}
"""Every accountant by the name the ledger records."""
DEFAULT_ACCOUNTANT = PLDAccountant.name
"""The tighter of the two: at the same ε budget it plans 5-8 % less noise than RDP
(measured in BENCHMARKS.md)."""

__all__ = ["ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "Accountant", "DPSegment", "create_accountant"]


def create_accountant(name: str) -> Accountant:
    """The accountant called ``name`` (a key of :data:`ACCOUNTANTS`).

    Raises:
        ValueError: no accountant has that name.
    """
    if name not in ACCOUNTANTS:
        raise ValueError(
            f"unknown privacy accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}"
        )
    return ACCOUNTANTS[name]()
