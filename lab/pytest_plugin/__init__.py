"""The pytest plugin: options and per-run state (options.py), the lab's lifecycle around a run
(lifecycle.py), and the fixtures suites use (fixtures.py). Loaded by the repo's conftest.py;
nothing else imports it."""

pytest_plugins = ["lab.pytest_plugin.options", "lab.pytest_plugin.lifecycle", "lab.pytest_plugin.fixtures"]
