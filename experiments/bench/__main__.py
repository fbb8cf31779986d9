"""``python -m experiments.bench NAME [options]``: the same as ``rl-ring bench``."""

import sys

from experiments.bench import main

sys.exit(main())
