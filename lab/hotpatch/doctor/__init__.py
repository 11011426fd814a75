"""The hot patch doctor (`python -m lab hotpatch doctor PATCH`): before a libcareplus patch is
built or loaded, every kind of failure the FAQ names, found in the patch, the target's DWARF
and its machine code. One module per job, lower ones first:

- patch_file: the unified diff, per file: changed lines, added and removed text, line shifts
- dwarf_facts: the target's DWARF for the changed files (pyelftools): functions, data, structs
- machine_code: its code (capstone): calls, taken addresses, threads started, loops, constructors
- findings: the kinds with the FAQ's wording and remedies; the report, as text or JSON
- source_map: which function, variable or struct a changed line belongs to
- source_checks: changed functions, and changes that are not function changes
- code_checks: inline, too small, recursive, never returns, initialization only
- running: buildIDs, and the stacks of a running QEMU's threads (eu-stack)
- doctor: diagnose(patch, binary) -> DoctorReport
- command: the command line
"""
