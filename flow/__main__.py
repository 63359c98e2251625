"""`python -m flow run|verilog|sweep …` (see `flow.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
