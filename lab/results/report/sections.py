"""The report's other parts: summary (stacks, backend, totals, thresholds), failed tests and their
evidence, preflight, cold vs live, hot patches."""
from __future__ import annotations

import re
from pathlib import Path

from lab.results.report import plots
from lab.results.report.junit import EXCUSED, FAIL, SKIPPED, totals
from lab.results.report.runfiles import RunData, evidence_dir_name, load_series
from lab.results.report.series import timeline

VERSION_KEYS = (("qemu", "qemu_version"), ("libvirt", "libvirt_version"), ("kernel", "kernel"))
PREFLIGHT_LINE = re.compile(r"^(?P<name>[\w.-]+): (?P<status>[A-Z]+): (?P<rest>.*)$", re.S)


def _stack_label(stack, fact_stack) -> str | None:
    """A stack's name and where it came from: "system", "bookworm-backports (distro archive)"."""
    detail = fact_stack if isinstance(fact_stack, dict) else {}
    name = stack if isinstance(stack, str) else (stack or {}).get("name") if isinstance(stack, dict) else None
    name = name or detail.get("name")
    source = detail.get("source")
    return None if not name else (f"{name} ({source})" if source and source != name else name)


def _hosts(run: RunData) -> list[dict]:
    """Every host named by lab.json or by a record's versions, with each distinct stack seen on it."""
    facts_hosts = {h.get("name"): h for h in run.facts.get("hosts") or [] if isinstance(h, dict) and h.get("name")}
    names = list(facts_hosts)
    stacks: dict[str, list[dict]] = {}
    for r in run.records:
        for host, v in (r.get("versions") or {}).items():
            if not isinstance(v, dict) or not any(v.get(key) for _k, key in VERSION_KEYS):
                continue
            names.append(host)
            stack = {k: v.get(key) for k, key in VERSION_KEYS}
            stack.update(accelerator=v.get("accelerator"), build=v.get("qemu_build") or None,
                         backports=", ".join(v.get("backports") or []) or None,
                         stack=_stack_label(v.get("stack"), (facts_hosts.get(host) or {}).get("stack")))
            if stack not in stacks.setdefault(host, []):
                stacks[host].append(stack)
    out = []
    for name in dict.fromkeys(names):
        fact = facts_hosts.get(name, {})
        detail = fact.get("stack") if isinstance(fact.get("stack"), dict) else {}
        # No record named this host's versions: what lab.json says of its stack (exact versions when pinned)
        seen = stacks.get(name) or [{"qemu": detail.get("qemu") or None, "libvirt": detail.get("libvirt") or None,
                                     "kernel": None, "build": None, "backports": None, "accelerator": None,
                                     "stack": _stack_label(fact.get("stack"), detail)}]
        for stack in seen:
            stack["accelerator"] = stack.get("accelerator") or fact.get("accelerator") or run.facts.get("accelerator")
        out.append({"name": name, "address": fact.get("address"), "stacks": seen})
    return out


def _thresholds(run: RunData) -> list[str]:
    files = [((r.get("thresholds_file") or {}).get("source")) for r in run.records]
    files.append(run.facts.get("thresholds"))
    return [f for f in dict.fromkeys(files) if f]


def summary_view(run: RunData) -> dict:
    facts = run.facts
    outcomes = run.outcomes
    return {"run_id": run.run_id, "backend": facts.get("backend"), "lab": facts.get("name"),
            "accelerator": facts.get("accelerator"), "accelerator_reason": facts.get("accelerator_reason"),
            "storage": (facts.get("storage") or {}).get("mode") if isinstance(facts.get("storage"), dict) else None,
            "lab_config": facts.get("lab_config"), "hosts": _hosts(run), "thresholds": _thresholds(run),
            "totals": totals(outcomes) if outcomes is not None else None,
            "tests": len(outcomes) if outcomes is not None else None,
            "skipped": [o for o in outcomes or [] if o.state == SKIPPED],
            "excused": [o for o in outcomes or [] if o.state == EXCUSED],
            "records": len(run.records), "warnings": run.warnings}


def failures_view(run: RunData) -> tuple[list[dict], list[dict]]:
    """(failed tests with their evidence files, evidence folders of tests that did not fail)."""
    failed, used = [], set()
    for o in run.outcomes or []:
        if o.state != FAIL:
            continue
        folder = evidence_dir_name(o.nodeid)
        used.add(folder)
        failed.append({"outcome": o, "anchor": "fail-" + folder[-60:], "evidence": run.evidence.get(folder, [])})
    others = [{"folder": k, "files": v} for k, v in run.evidence.items() if k not in used]
    return failed, others


def preflight_view(run: RunData) -> list[dict]:
    """The doctor's checklist from the preflight suite's JUnit properties (one `preflight` line per check)."""
    rows = []
    for o in run.outcomes or []:
        for line in o.prop("preflight"):
            m = PREFLIGHT_LINE.match(line)
            if not m:
                rows.append({"name": o.bare_name, "status": None, "seen": line, "remedy": "", "outcome": o})
                continue
            seen, _, remedy = m["rest"].partition(" -> ")
            rows.append({"name": m["name"], "status": m["status"].lower(), "seen": seen, "remedy": remedy,
                         "outcome": o})
    for r in run.of_kind("preflight"):  # a record per check, where a suite writes them
        rows.append({"name": r.get("name"), "status": r.get("status"), "seen": r.get("seen", ""),
                     "remedy": r.get("remedy", ""), "outcome": run.outcome(r.get("test", ""))})
    return rows


def _ms(value) -> float | None:
    return value * 1000.0 if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def cold_view(run: RunData, out_dir: Path) -> dict:
    colds = [{"scenario": r.get("scenario") or f"cold-{r.get('storage', '?')}", "src": r.get("src"),
              "dst": r.get("dst"), "storage": r.get("storage"), "ok": not r.get("error") if "error" in r else None,
              "error": r.get("error") or "", "phases_s": r.get("phases_s") or {}, "total_s": r.get("total_s"),
              "bytes": r.get("bytes_copied"), "interruption_ms": _ms(r.get("interruption_s")),
              "limit_s": r.get("limit_s"), "limit_basis": r.get("limit_basis") or "",
              "outcome": run.outcome(r.get("test", ""))} for r in run.of_kind("cold-migration")]
    contrast = []
    for r in run.of_kind("contrast"):
        for row in r.get("rows") or []:
            contrast.append({"storage": r.get("storage"), "mode": row.get("mode"),
                             "interruption_ms": _ms(row.get("interruption_s")), "total_s": row.get("total_s"),
                             "bytes": row.get("bytes_moved"), "rebooted": row.get("rebooted"),
                             "outcome": run.outcome(r.get("test", ""))})
    chart = plots.interruption_bars(contrast, out_dir, "cold-vs-live.png") if contrast else None
    return {"migrations": colds, "contrast": contrast, "chart": chart}


def hotpatch_view(run: RunData, out_dir: Path) -> dict:
    applies = run.of_kind("hotpatch-apply")
    chart = None
    if applies:
        limits = (applies[0].get("thresholds") or {})
        series = {"apply stall": [a.get("stall_ms") for a in applies],
                  "frozen_time": [a["frozen_time_us"] / 1000 if isinstance(a.get("frozen_time_us"), (int, float))
                                  else None for a in applies],
                  "unapply stall": [a.get("unapply_stall_ms") for a in applies]}
        series = {k: [v for v in vs if isinstance(v, (int, float))] for k, vs in series.items()}
        chart = plots.stall_bars({k: v for k, v in series.items() if v},
                                 {"apply stall": limits.get("apply_stall_ms"), "frozen_time": limits.get("apply_frozen_ms"),
                                  "unapply stall": limits.get("unapply_stall_ms")}, out_dir, "hotpatch-stalls.png")
    timelines = []
    for i, r in enumerate(run.records, 1):
        if str(r.get("kind", "")).startswith("hotpatch") and r.get("series"):
            data, why = load_series(run.run_dir, r)
            if data is None:
                timelines.append({"title": r.get("kind"), "plot": None, "absent": why})
                continue
            line = timeline(data, r, run.facts)
            timelines.append({"title": r.get("kind"), "absent": "", "plot": plots.gap_timeline(
                line, f"{r.get('kind')} #{r.get('repetition', i)}: heartbeat gaps around the patch", out_dir,
                f"hotpatch-timeline-{i}.png")})
    diagnoses = [r for r in run.records if "diagnosis" in r and str(r.get("kind", "")).startswith("hotpatch")]
    builds = run.of_kind("qemu-source-build", "hotpatch-build")
    others = [r for r in run.records if str(r.get("kind", "")).startswith("hotpatch")
              and r not in applies and r not in diagnoses and r not in builds and r.get("kind") != "hotpatch-apply-summary"]
    return {"applies": applies, "chart": chart, "timelines": timelines, "diagnoses": diagnoses, "builds": builds,
            "others": others}


def unknown_kinds(run: RunData, known: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in run.records:
        kind = str(r.get("kind", "(no kind)"))
        if kind not in known and not kind.startswith("hotpatch"):
            counts[kind] = counts.get(kind, 0) + 1
    return counts
