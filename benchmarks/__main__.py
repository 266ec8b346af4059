"""`python -m benchmarks` (what `benchmarks/run` executes)."""

import sys

from benchmarks.suite import main

sys.exit(main())
