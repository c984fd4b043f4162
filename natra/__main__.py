"""`python3 -m natra`: the same entry point as the `natra` console script."""

from natra.cli import entry

entry()
