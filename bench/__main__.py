"""`python -m bench`: the same as `python bench/run.py` (run from the repository root)."""

import sys

from bench.run import main

sys.exit(main())
