"""The hot patch doctor against a small real program (tests/data/hotpatch_doctor/program.c,
one function of each shape), compiled here with gcc -g -O2: real ELF, DWARF and machine
code in a second. Each kind is named for the patch that has it, and is gone when its
precondition is broken for real (another build, another function, another process).
The same kinds against the QEMU build are in tests/test_hotpatch_doctor_qemu.py.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.__main__ import main
from lab.errors import HotpatchError
from lab.hotpatch.doctor.doctor import diagnose
from lab.util.process import run

SOURCES = Path(__file__).parent / "data" / "hotpatch_doctor"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")


def build(directory: Path, output: str, *flags: str) -> Path:
    run(["gcc", "-pthread", *flags, "-o", output, "program.c"], cwd=directory, timeout=120)
    return directory / output


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """The program's source tree, built with -g -O2 as `program` (its DWARF points back at this tree)."""
    tree = tmp_path_factory.mktemp("doctor-program")
    for source in SOURCES.iterdir():
        shutil.copy(source, tree / source.name)
    build(tree, "program", "-g", "-O2")
    return tree


def make_patch(tree: Path, name: str, old: str, new: str, out: Path) -> Path:
    """A real unified diff of `name` in `tree` with `old` replaced by `new` (the tree is left as it was)."""
    text = (tree / name).read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {name}"
    diff = difflib.unified_diff(text.splitlines(keepends=True), text.replace(old, new).splitlines(keepends=True),
                                fromfile=f"a/{name}", tofile=f"b/{name}")
    out.write_text("".join(diff))
    return out


# (file, old text, new text, kind, detail, the finding's subject)
KIND_CASES = [
    pytest.param("program.c", "return x + 1;", "return x + 2;", "inline", "", "add_one", id="inline"),
    pytest.param("program.c", '"VERBOSE") != NULL;', '"VERBOSE") == NULL;', "inline", "", "read_verbosity",
                 id="inline-into-an-unpatchable-caller"),
    pytest.param("program.c", "return n;", "return n + 1;", "recursive", "", "fibonacci", id="recursive-direct"),
    pytest.param("program.c", "1 : is_odd(n - 1);", "1 : is_odd(n - 1) & 1;", "recursive", "", "is_even",
                 id="recursive-through-is_odd"),
    pytest.param("program.c", '"fatal: %s\\n"', '"fatal error: %s\\n"', "never-returns", "noreturn", "die",
                 id="noreturn"),
    pytest.param("program.c", "sleep(PAUSE_SECONDS);", "sleep(PAUSE_SECONDS + 1);", "never-returns",
                 "infinite-loop", "serve_forever", id="infinite-loop"),
    pytest.param("program.c", "usleep(1000 *", "usleep(2000 *", "never-returns", "thread-entry", "worker",
                 id="thread-entry"),
    pytest.param("program.c", "atoi(getenv(\"LIMIT\")) : limit;", "atoi(getenv(\"LIMIT\")) + 1 : limit;",
                 "init-only", "", "setup_defaults", id="init-constructor"),
    pytest.param("program.c", '"VERBOSE") != NULL;', '"VERBOSE") == NULL;', "init-only", "", "read_verbosity",
                 id="init-inlined-into-a-constructor"),
    pytest.param("program.c", "types_known = 3;", "types_known = 4;", "init-only", "", "register_types",
                 id="init-registered-by-constructor"),
    pytest.param("program.c", "{\n}\n", "{\n    /* nothing to do */\n}\n", "too-small", "", "nothing",
                 id="shorter-than-5-bytes"),
    pytest.param("program.c", "int limit = 10;", "int limit = 11;", "not-a-function-change", "global-data",
                 "limit", id="global-data"),
    pytest.param("program.c", "    seen.hits++;\n", "    static int calls;\n    seen.hits += ++calls;\n",
                 "not-a-function-change", "static-data", "scale", id="static-data-new"),
    pytest.param("program.c", "static int ticket = 100;", "static int ticket = 200;", "not-a-function-change",
                 "static-data", "next_ticket", id="static-data-changed"),
    pytest.param("program.c", "    int last;\n", "    int last;\n    int first;\n", "not-a-function-change",
                 "struct-layout", "counter", id="struct-layout"),
    pytest.param("program.c", "int scale(int v, int k)\n{", "int scale(int v, long k)\n{", "not-a-function-change",
                 "parameters", "scale", id="parameters"),
    pytest.param("program.c", "static inline int add_one(int x)", "static inline int add_one(long x)",
                 "not-a-function-change", "parameters", "add_one", id="parameters-static"),
    pytest.param("program.c", "#define PAUSE_SECONDS 1", "#define PAUSE_SECONDS 2", "not-a-function-change",
                 "macro", "PAUSE_SECONDS", id="macro-used-in-an-endless-loop"),
    pytest.param("program.c", "#define WEIGHT 2", "#define WEIGHT 3", "not-a-function-change", "macro", "WEIGHT",
                 id="macro"),
    pytest.param("shapes.h", "#define SCALE_DEFAULT 3", "#define SCALE_DEFAULT 4", "not-a-function-change",
                 "header", "shapes.h", id="header"),
]
CLEAN = ("program.c", "    return v * k;", "    return v * k + 1;")
# Findings that do not make the patch ineffective: add_one's only caller, compute, is patchable itself, and
# libcare-patch-make replaces it with add_one (its code changed).
# recursive and noreturn functions are entered anew by each call (shown with libcareplus on QEMU).
# A static function's parameters and a macro used by compute only: compute is replaced too (patchable).
WARNINGS = {("inline", "", "add_one"), ("recursive", "", "fibonacci"), ("recursive", "", "is_even"),
            ("never-returns", "noreturn", "die"), ("not-a-function-change", "parameters", "add_one"),
            ("not-a-function-change", "macro", "WEIGHT"),
            ("not-a-function-change", "static-data", "scale")}  # a new static lives in the patch (shown loading)


def findings(report) -> set[tuple[str, str, str]]:
    return {(f.kind, f.detail, f.function) for f in report.findings}


@pytest.mark.parametrize("file, old, new, kind, detail, subject", KIND_CASES)
def test_doctor_names_the_kind(program, tmp_path, file, old, new, kind, detail, subject):
    report = diagnose(make_patch(program, file, old, new, tmp_path / "kind.patch"), program / "program")
    assert (kind, detail, subject) in findings(report), report.text()
    finding = next(f for f in report.findings if (f.kind, f.detail, f.function) == (kind, detail, subject))
    assert finding.evidence and finding.faq and finding.remedy
    assert finding.ineffective == ((kind, detail, subject) not in WARNINGS), report.text()
    assert report.ineffective == any(f.ineffective for f in report.findings)


@pytest.mark.parametrize("old, new, replaced", [
    pytest.param("return x + 1;", "return x + 2;", ["compute"], id="inline-caller"),
    pytest.param("static inline int add_one(int x)", "static inline int add_one(long x)", ["compute"],
                 id="static-parameters-caller"),
    pytest.param("#define WEIGHT 2", "#define WEIGHT 3", ["compute"], id="macro-user"),
    pytest.param("#define PAUSE_SECONDS 1", "#define PAUSE_SECONDS 2", ["serve_forever"], id="macro-user-blocked"),
    pytest.param("    return v * k;", "    v += 1;\n    return v * k;", ["checked", "scale"], id="moved-line-user"),
])
def test_what_the_kpatch_replaces(program, tmp_path, old, new, replaced):
    """The unedited functions whose code changes with the patch are named (libcare-patch-make replaces them)."""
    report = diagnose(make_patch(program, "program.c", old, new, tmp_path / "r.patch"), program / "program")
    assert report.replaced() == replaced, report.text()
    assert report.as_dict()["replaced"] == replaced


def test_a_plain_body_change_has_no_finding(program, tmp_path):
    report = diagnose(make_patch(program, *CLEAN, tmp_path / "clean.patch"), program / "program")
    assert [c.name for c in report.changed] == ["scale"]
    assert report.findings == [], report.text()
    assert not report.ineffective


def test_a_loop_left_only_through_exit_is_not_endless(program, tmp_path):
    """print_table's loop has an edge out, to exit(): the function never returns, but the loop ends."""
    patch = make_patch(program, "program.c", '"row %d\\n"', '"row %3d\\n"', tmp_path / "table.patch")
    report = diagnose(patch, program / "program")
    assert [c.name for c in report.changed] == ["print_table"]
    assert "infinite-loop" not in {f.detail for f in report.findings}, report.text()


def test_moved_lines_in_a_file_using_line_macros_warn_only(program, tmp_path):
    patch = make_patch(program, "program.c", "    return v * k;", "    v += 1;\n    return v * k;",
                       tmp_path / "moves.patch")
    report = diagnose(patch, program / "program")
    moved = [f for f in report.findings if f.detail == "line-macro"]
    assert moved and "checked" in moved[0].summary and not moved[0].ineffective, report.text()
    assert not report.ineffective


@pytest.mark.parametrize("old, new, kind, function", [
    pytest.param("return x + 1;", "return x + 2;", "inline", "add_one", id="inline-gone-at-O0"),
    pytest.param("{\n}\n", "{\n    /* nothing to do */\n}\n", "too-small", "nothing", id="too-small-gone-at-O0"),
])
def test_a_build_without_the_shape_has_no_such_finding(program, tmp_path, old, new, kind, function):
    """-O0 inlines nothing and gives every function a frame: the same patch, the precondition gone."""
    unoptimized = build(program, "program-O0", "-g", "-O0")
    report = diagnose(make_patch(program, "program.c", old, new, tmp_path / "p.patch"), unoptimized)
    assert function in [c.name for c in report.changed]
    assert kind not in {f.kind for f in report.findings}, report.text()


STACKS_READABLE = pytest.mark.skipif(
    shutil.which("eu-stack") is None or os.geteuid() != 0,
    reason="thread stacks need eu-stack (apt-get install elfutils / dnf install elfutils) and root (ptrace)")


@STACKS_READABLE
def test_a_running_process_inside_the_function_is_named(program, tmp_path):
    patch = make_patch(program, "program.c", "sleep(PAUSE_SECONDS);", "sleep(PAUSE_SECONDS + 1);",
                       tmp_path / "loop.patch")
    idle = subprocess.Popen([program / "program"], stdout=subprocess.DEVNULL)  # 1 argument: returns at once
    idle.wait(timeout=10)
    looping = subprocess.Popen([program / "program", "a", "b"], stdout=subprocess.DEVNULL)  # serve_forever
    try:
        time.sleep(0.3)
        report = diagnose(patch, program / "program", pid=looping.pid)
    finally:
        looping.kill()
        looping.wait()
    on_stack = [f for f in report.findings if f.detail == "on-stack"]
    assert on_stack and on_stack[0].function == "serve_forever", report.text()
    assert f"PID {looping.pid}" in on_stack[0].summary
    # Another function, not on any stack: no such finding.
    sleeper = subprocess.Popen([program / "program", "a", "b"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        other = diagnose(make_patch(program, *CLEAN, tmp_path / "clean.patch"), program / "program", pid=sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not [f for f in other.findings if f.detail == "on-stack"], other.text()


def test_buildid_of_another_build_is_named(program, tmp_path):
    patch = make_patch(program, *CLEAN, tmp_path / "clean.patch")
    other = build(program, "program-O1", "-g", "-O1")
    report = diagnose(patch, program / "program", target=str(other))
    assert [f.kind for f in report.findings] == ["buildid"], report.text()
    assert diagnose(patch, program / "program", target=str(program / "program")).findings == []


def lab(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m lab hotpatch doctor ARGS` in this process (its main(); a new interpreter costs ~5 s of imports)."""
    capsys.readouterr()
    status = main(["hotpatch", "doctor", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out.out, out.err)


def test_command_line_exit_status_text_and_json(program, tmp_path, capsys):
    bad = make_patch(program, "program.c", "types_known = 3;", "types_known = 4;", tmp_path / "init.patch")
    proc = subprocess.run([sys.executable, "-m", "lab", "hotpatch", "doctor", str(bad), "--qemu",
                           str(program / "program")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL init-only: register_types is registered at start-up by the constructor" in proc.stdout
    assert "verdict: INEFFECTIVE" in proc.stdout
    data = json.loads(lab(capsys, str(bad), "--qemu", str(program / "program"), "--json").stdout)
    assert data["ineffective"] and data["findings"][0]["kind"] == "init-only"
    clean = lab(capsys, str(make_patch(program, *CLEAN, tmp_path / "clean.patch")), "--qemu",
                str(program / "program"))
    assert clean.returncode == 0 and "verdict: no finding" in clean.stdout, clean.stdout + clean.stderr


@pytest.mark.parametrize("case, expected", [
    pytest.param("missing-patch", "no such patch file", id="missing-patch"),
    pytest.param("not-a-diff", "no unified diff hunk", id="not-a-diff"),
    pytest.param("no-debug-info", "has no debug info", id="no-debug-info"),
    pytest.param("not-elf", "not an ELF file", id="not-elf"),
    pytest.param("unknown-file", "compilation units in", id="unknown-file"),
    pytest.param("missing-binary", "no such file or build directory", id="missing-binary"),
])
def test_bad_input_is_one_line(program, tmp_path, capsys, case, expected):
    patch = make_patch(program, *CLEAN, tmp_path / "clean.patch")
    binary = program / "program"
    if case == "missing-patch":
        patch = tmp_path / "absent.patch"
    elif case == "not-a-diff":
        patch.write_text("just words\n")
    elif case == "no-debug-info":
        binary = build(program, "program-nodebug", "-O2")
    elif case == "not-elf":
        binary = tmp_path / "text"
        binary.write_text("not a binary\n")
    elif case == "unknown-file":
        patch.write_text(patch.read_text().replace("program.c", "elsewhere.c"))
    elif case == "missing-binary":
        binary = tmp_path / "absent"
    proc = lab(capsys, str(patch), "--qemu", str(binary))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab: error:") and expected in lines[0], proc.stderr
    if case != "missing-binary":  # (--qemu's own check)
        with pytest.raises(HotpatchError):
            diagnose(patch, binary)
