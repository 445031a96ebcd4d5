"""`python -m backtest_engine.service --host H --port P` (same as `backtest-engine serve`)."""

import sys

from backtest_engine.service.cli import main

sys.exit(main())
