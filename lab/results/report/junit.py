"""Test outcomes from a run's junit.xml: one state per test (pass, fail, excused, skipped), with
the reason, the message and the JUnit properties the test recorded."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

PASS, FAIL, EXCUSED, SKIPPED = "pass", "fail", "excused", "skipped"
STATES = (PASS, FAIL, EXCUSED, SKIPPED)


@dataclass
class Outcome:
    classname: str
    name: str
    state: str
    seconds: float | None
    reason: str = ""  # skip or excuse reason, or the failure's message (first line)
    detail: str = ""  # the failure's text, trimmed
    error: bool = False  # an error (setup/teardown) rather than a failed assertion
    properties: list[tuple[str, str]] = field(default_factory=list)

    @property
    def nodeid(self) -> str:
        """pytest's node id, rebuilt from the JUnit names (module path :: test name)."""
        parts = self.classname.split(".")
        # classname is the module path with dots, plus any test classes (capitalised by convention)
        split = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
        module = "/".join(parts[:split]) + ".py"
        return "::".join([module, *parts[split:], self.bare_name])

    @property
    def bare_name(self) -> str:
        """The test name without xdist's `@group` suffix."""
        return self.name.rsplit("@", 1)[0] if "@" in self.name and not self.name.endswith("]") else self.name

    def prop(self, key: str) -> list[str]:
        return [v for k, v in self.properties if k == key]


def _first_line(text: str | None) -> str:
    return next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")


def _outcome(case: ET.Element) -> Outcome:
    seconds = case.get("time")
    out = Outcome(case.get("classname", ""), case.get("name", ""), PASS,
                  float(seconds) if seconds not in (None, "") else None)
    props = case.find("properties")
    if props is not None:
        out.properties = [(p.get("name", ""), p.get("value", "")) for p in props.findall("property")]
    for child in case:
        if child.tag in ("failure", "error"):
            out.state, out.error = FAIL, child.tag == "error" or out.error
            out.reason = out.reason or _first_line(child.get("message")) or _first_line(child.text)
            out.detail = (out.detail + "\n" + (child.text or "")).strip()[-4000:]
        elif child.tag == "skipped" and out.state != FAIL:
            xfail = child.get("type") == "pytest.xfail"
            out.state = EXCUSED if xfail else SKIPPED
            reason = child.get("message") or child.text or ""
            out.reason = reason.strip().removeprefix("Skipped: ").strip()
    return out


def read_junit(path: Path) -> list[Outcome]:
    """Every test case of junit.xml; an unreadable file is a ValueError naming it."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{path}: not a readable JUnit XML file ({exc})") from None
    return [_outcome(case) for case in root.iter("testcase")]


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {state: 0 for state in STATES}
    for o in outcomes:
        counts[o.state] += 1
    return counts
