"""Quick: is libcareplus there and answering? Runs in `make test` / CI, where it skips, saying how to get it."""
from __future__ import annotations

import pytest

from lab.hotpatch.libcareplus import TOOLS
from lab.util.process import run


@pytest.mark.smoke
@pytest.mark.hotpatch
def test_libcareplus_tools_are_complete_and_answer(libcare):
    for tool in TOOLS:
        assert libcare.tool(tool).startswith(str(libcare.bindir))
    usage = run([libcare.tool("libcare-ctl"), "-h"], check=False, timeout=30)
    text = usage.stdout + usage.stderr
    for command in ("patch", "unpatch", "info"):
        assert command in text, f"libcare-ctl -h does not list `{command}`: {text.strip()[:200]}"
    dump = run([libcare.tool("libcare-dump")], check=False, timeout=30)
    assert "-H" in dump.stdout + dump.stderr, "libcare-dump does not offer -H (kpatch headers)"
