"""Verdicts and findings as records carry them: today's `{"state", "why", "defect", "findings"}`
(lab.results.verdicts) or an older run's plain "pass"/"fail" with a `failures` list. An excused
verdict keeps its own state and names the defect; it is never shown as a pass."""
from __future__ import annotations


def finding_text(finding) -> str:
    if isinstance(finding, dict):
        kind, text = finding.get("kind"), finding.get("text", "")
        return f"{kind}: {text}" if kind else str(text)
    return str(finding)


def findings_of(doc: dict, *keys: str) -> list[str]:
    out: list[str] = []
    for key in keys:
        value = doc.get(key)
        if isinstance(value, list):
            out += [finding_text(f) for f in value]
    return out


def verdict_of(doc: dict | None) -> dict | None:
    """{"state": pass|fail|excused|..., "label", "why", "defect", "findings": [text]} or None when absent."""
    if not doc or doc.get("verdict") is None:
        return None
    value = doc["verdict"]
    if isinstance(value, dict):
        state, defect = value.get("state"), value.get("defect")
        label = f"excused by {defect}" if state == "excused" and defect else str(state)
        return {"state": state, "label": label, "why": value.get("why") or "", "defect": defect,
                "findings": findings_of(value, "findings")}
    return {"state": str(value), "label": str(value), "why": "", "defect": None,
            "findings": findings_of(doc, "failures")}
