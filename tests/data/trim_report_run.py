"""Make tests/data/report-run/ from a real run's report folder: junit.xml, results.jsonl and lab.json
as the run wrote them; the series sidecars of the first KEEP_SERIES migrations of each scenario (the
others, and any longer than MAX_SERIES_BYTES, are left out, so their records point at a missing
file: the report must say so); every
evidence file cut to its last EVIDENCE_LINES lines.

    .venv/bin/python tests/data/trim_report_run.py RUN_DIR
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

KEEP_SERIES = 1
MAX_SERIES_BYTES = 200_000  # a longer series stays out: the report must then say it is missing
EVIDENCE_LINES = 30
OUT = Path(__file__).parent / "report-run"


def main(run: Path) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for name in ("junit.xml", "results.jsonl", "lab.json"):
        if (run / name).exists():
            shutil.copyfile(run / name, OUT / name)
    kept: dict[str, int] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        doc = json.loads(line)
        ref = doc.get("series")
        if not ref or not (run / ref).exists():
            continue
        key = f"{doc.get('kind')}:{doc.get('scenario')}"
        if kept.get(key, 0) < KEEP_SERIES and (run / ref).stat().st_size <= MAX_SERIES_BYTES:
            kept[key] = kept.get(key, 0) + 1
            (OUT / ref).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / ref, OUT / ref)
    for path in (run / "tests").rglob("*") if (run / "tests").is_dir() else []:
        if path.is_file():
            target = OUT / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = path.read_text(errors="replace").splitlines()[-EVIDENCE_LINES:]
            target.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {sum(f.stat().st_size for f in OUT.rglob('*') if f.is_file()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
