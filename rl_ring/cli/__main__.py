"""``python -m rl_ring.cli COMMAND ...``: the same as ``rl-ring COMMAND ...``."""

import sys

from rl_ring.cli import main

sys.exit(main())
