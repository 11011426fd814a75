"""The report folder: `index.html`, `report-assets/` (style sheet, plots, summary.json). Rendered with
Jinja2 (autoescaped templates beside this module); nothing on the page is loaded from the network."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from lab.errors import ReportError
from lab.results.report.junit import STATES
from lab.results.report.live import live_views
from lab.results.report.runfiles import RunData, load_run
from lab.results.report.faults import faults_view
from lab.results.report.sections import (cold_view, failures_view, hotpatch_view, preflight_view, summary_view,
                                         unknown_kinds)
from lab.results.report.summary import run_summary
from lab.util.files import atomic_write_json, atomic_write_text

TEMPLATES = Path(__file__).parent / "templates"
ASSETS = "report-assets"
INDEX = "index.html"
KNOWN_KINDS = {"live-migration", "live-migration-summary", "oracle-migration", "bandwidth", "summary", "cold-migration",
               "contrast",
               "preflight", "qemu-source-build", "fault"}
ABSENT = Markup('<span class="absent">absent</span>')


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_ms(value, digits: int = 1):
    return f"{value:,.{digits}f} ms" if _number(value) else ABSENT


def fmt_s(value, digits: int = 2):
    return f"{value:,.{digits}f} s" if _number(value) else ABSENT


def fmt_mib(value):
    return f"{value / 2**20:,.1f} MiB" if _number(value) else ABSENT


def fmt_num(value, digits: int = 0):
    return f"{value:,.{digits}f}" if _number(value) else ABSENT


def fmt_text(value):
    return ABSENT if value is None or value == "" else value


def fmt_yes(value):
    return ABSENT if value is None else ("yes" if value else "no")


def state_badge(state) -> Markup:
    if state is None:
        return ABSENT
    text = str(state)
    word = (text.split() or ["other"])[0].lower()
    css = word if word in (*STATES, "warn") else "other"
    return Markup('<span class="badge {}">{}</span>').format(css, text)


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=fmt_ms, s=fmt_s, mib=fmt_mib, num=fmt_num, text=fmt_text, yes=fmt_yes, badge=state_badge)
    return env


def _clean_assets(out: Path) -> Path:
    assets = out / ASSETS
    if assets.exists():
        shutil.rmtree(assets / "plots", ignore_errors=True)
    (assets / "plots").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATES / "style.css", assets / "style.css")
    return assets


def render_run(run: RunData) -> Path:
    out = run.run_dir
    try:
        assets = _clean_assets(out)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report there ({exc.strerror})") from None
    plots_dir = assets / "plots"
    scenarios, live_others = live_views(run, plots_dir)
    failed, other_evidence = failures_view(run)
    page = environment().get_template("index.html").render(
        title=f"Run {run.run_id}", generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), assets=ASSETS,
        summary=summary_view(run), failed=failed, other_evidence=other_evidence, scenarios=scenarios,
        live_others=live_others, preflight=preflight_view(run), cold=cold_view(run, plots_dir),
        hotpatch=hotpatch_view(run, plots_dir), faults=faults_view(run), unknown=unknown_kinds(run, KNOWN_KINDS))
    atomic_write_json(assets / "summary.json", run_summary(run))
    atomic_write_text(out / INDEX, page)
    return out / INDEX


def build_report(run_dir: Path) -> Path:
    """Read a run's folder and write its report into it; returns index.html's path."""
    return render_run(load_run(Path(run_dir)))


def read_summary(run_dir: Path) -> dict:
    """A run's summary (report-assets/summary.json, or computed from its records when missing)."""
    path = Path(run_dir) / ASSETS / "summary.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    return run_summary(load_run(Path(run_dir)))
