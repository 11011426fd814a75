"""Everything under suites/ is an acceptance test; `make test` runs only those marked smoke."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/suites/" in str(item.fspath):
            item.add_marker(pytest.mark.acceptance)
