"""``python -m simulations``: the same as ``fedshop-sim`` (how ``bench`` runs a section
whose command is a ``fedshop-sim`` subcommand, without the console script on PATH)."""

import sys

from simulations.cli import main

sys.exit(main())
