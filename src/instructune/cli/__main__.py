"""`python -m instructune.cli ...`: the same as the `instructune` command (accelerate and torchrun launch it so)."""

import sys

from instructune.cli import main

sys.exit(main())
