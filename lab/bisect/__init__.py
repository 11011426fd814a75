"""From "the candidate is worse" to the commit: `python -m lab bisect` over a QEMU git tree's commits, or over
how many of a patch series are applied, each step built, run and judged the way the release gate judges."""
