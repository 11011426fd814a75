"""Loads the lab's pytest plugin for suites/ and tests/ alike."""
pytest_plugins = ["lab.pytest_plugin"]
