"""Mutation testing of the hypervisor: QEMU built with one small, known defect at a time (suites/mutants/), the
suites run on it, and each mutant counted as caught, missed, excused or undecided (`python -m lab mutants run`)."""
