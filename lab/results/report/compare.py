"""Two runs side by side (baseline and candidate): verdict changes and probe shifts. The release
gate decides; this only shows, from the two runs' summaries (render.read_summary)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from lab.results.report.live import PROBES
from lab.results.report.render import ASSETS, TEMPLATES, environment
from lab.util.files import atomic_write_text

FIGURES = (*PROBES, "total_s")


def _shift(before: dict | None, after: dict | None, stat: str) -> dict:
    a = before.get(stat) if before else None
    b = after.get(stat) if after else None
    if a is None or b is None:
        return {"base": a, "cand": b, "delta": None, "pct": None}
    return {"base": a, "cand": b, "delta": b - a, "pct": (b - a) / a * 100 if a else None}


def verdict_changes(base: dict, cand: dict) -> list[dict]:
    """Every test whose state differs, plus tests found in only one run."""
    rows = []
    tests_a, tests_b = base.get("tests") or {}, cand.get("tests") or {}
    for nodeid in dict.fromkeys([*tests_a, *tests_b]):
        a, b = tests_a.get(nodeid), tests_b.get(nodeid)
        if (a or {}).get("state") != (b or {}).get("state"):
            rows.append({"test": nodeid, "base": (a or {}).get("state"), "cand": (b or {}).get("state"),
                         "reason": (b or a or {}).get("reason", "")})
    return rows


def probe_shifts(base: dict, cand: dict) -> list[dict]:
    rows = []
    sa, sb = base.get("scenarios") or {}, cand.get("scenarios") or {}
    for scenario in dict.fromkeys([*sa, *sb]):
        verdicts = ((sa.get(scenario) or {}).get("verdict"), (sb.get(scenario) or {}).get("verdict"))
        for figure in FIGURES:
            a, b = (sa.get(scenario) or {}).get(figure), (sb.get(scenario) or {}).get(figure)
            if a is None and b is None:
                continue
            rows.append({"scenario": scenario, "figure": figure, "unit": "s" if figure == "total_s" else "ms",
                         "n": ((a or {}).get("n"), (b or {}).get("n")), "verdicts": verdicts,
                         "p50": _shift(a, b, "p50"), "max": _shift(a, b, "max")})
    return rows


def render_comparison(base: dict, cand: dict, out_dir: Path, name: str = "compare.html") -> Path:
    """Write `<out_dir>/<name>` (and its style sheet) comparing two run summaries; returns its path."""
    out_dir = Path(out_dir)
    (out_dir / ASSETS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATES / "style.css", out_dir / ASSETS / "style.css")
    page = environment().get_template("compare.html").render(
        title=f"{base.get('run_id')} vs {cand.get('run_id')}", generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        assets=ASSETS, base=base, cand=cand, changes=verdict_changes(base, cand), shifts=probe_shifts(base, cand),
        figures=FIGURES)
    atomic_write_text(out_dir / name, page)
    return out_dir / name
