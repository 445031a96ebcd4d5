"""`python -m backtest_devtools ...` is the same as `python -m backtest_devtools.cluster ...`."""

import sys

from backtest_devtools.cli import main

sys.exit(main())
