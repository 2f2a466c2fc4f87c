"""``python -m lab``: the lab's command line (:mod:`lab.cli`)."""

import sys

from lab.cli import main

sys.exit(main())
