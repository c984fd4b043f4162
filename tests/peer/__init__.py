"""The peer scenarios (a package, so that its conftest never shadows tests/kernel/conftest.py)."""
