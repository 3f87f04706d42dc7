"""`python -m rrt.cli`: the `rrt` command without its console script (e.g. under torchrun)."""
import sys

from . import main

sys.exit(main())
