"""`python3 -m natra`: the same entry point as the `natra` console script."""

import sys

from natra.cli import main

sys.exit(main())
