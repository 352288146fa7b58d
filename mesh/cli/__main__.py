"""`python -m mesh.cli ...` runs the `meshserve` command (tests and benchmarks start processes this way)."""

import sys

from mesh.cli import main

sys.exit(main())
