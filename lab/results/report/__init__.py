"""The HTML report of a run (`reports/<run>/index.html` + `report-assets/`), a comparison page of
two runs, and a headless Chromium check of a rendered page.

    build_report(run_dir) -> index.html          python -m lab report RUN_DIR
    render_comparison(read_summary(a), read_summary(b), out_dir) -> compare.html
    check_page(index_html, screenshot=...) -> PageCheck (console errors, requests, DOM facts)
"""
from lab.results.report.browser import PageCheck, check_page
from lab.results.report.compare import render_comparison
from lab.results.report.render import ASSETS, INDEX, build_report, read_summary
from lab.results.report.runfiles import load_run, write_lab_facts

__all__ = ["ASSETS", "INDEX", "PageCheck", "build_report", "check_page", "load_run", "read_summary",
           "render_comparison", "write_lab_facts"]
