"""The guest agent's dirty-page oracle catches a page that missed a write, and `verify` a damaged
fill pattern, for real.

The agent (lab/guest/agent/, built as for the guest image) runs here as an ordinary process in
private network and mount namespaces; its memory is changed behind its back through
/proc/PID/mem, which is what a lost write looks like from inside: a page holding a value the
writer did not leave there. The oracle must name the page, the value found and the one expected,
on the control socket and on the console (whose log outlives a guest that crashes).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.guest.image import agent_gcc_argv
from lab.migration.external_oracle import one_boundary_violations, stamp

# Runs inside `unshare --net --mount`: loopback only, and /dev/console bound to a file; `cmd` asks the agent.
START = r'''
import json, socket, struct, subprocess, sys, time
agent_bin, console = sys.argv[1], sys.argv[2]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", console, "/dev/console"], check=True)
agent = subprocess.Popen([agent_bin], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
def cmd(text):
    for _ in range(40):
        try:
            s.sendto(f"C {time.time_ns()} {text}".encode(), ("127.0.0.1", 7777))
            return dict(kv.split("=", 1) for kv in s.recvfrom(2048)[0].decode().split()[3:])
        except (ConnectionRefusedError, socket.timeout):
            time.sleep(0.1)
    raise SystemExit("agent did not answer")
'''

DRIVER = START + r'''
try:
    cmd("dirty 1 4")  # 1 MiB/s over 4 MiB: the writer needs 4 s per round
    fill = int(cmd("fill 5 2")["base"], 16)
    time.sleep(0.5)
    clean = cmd("oracle")
    verified = cmd("verify")
    sweep, hot, small = (int(clean[k], 16) for k in ("sweep_base", "hot_base", "hot_small_base"))
    with open(f"/proc/{agent.pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(fill + 3 * 4096 + 8)  # one word of the fill pattern
        mem.write(struct.pack("<Q", 12345))
        mem.seek(sweep + 900 * 4096)  # far ahead of the writer: a page that should still hold round 0
        mem.write(struct.pack("<Q", 77777))
        mem.seek(hot + 3 * 4096)  # a hot page: rewritten every millisecond after a check
        mem.write(struct.pack("<Q", 55555))
        mem.seek(small + 5 * 4096)  # a page of the hot set on ordinary 4 KiB pages
        mem.write(struct.pack("<Q", 44444))
    time.sleep(0.1)
    print(json.dumps({"clean": clean, "dirty": cmd("oracle"), "after": cmd("oracle"), "sweep": sweep, "hot": hot,
                      "small": small, "verified": verified, "verify": cmd("verify")}))
finally:
    agent.kill()
'''


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agent") / "agent"
    subprocess.run([*agent_gcc_argv(out), "-Werror"], check=True, capture_output=True, text=True)
    return out


def _drive(agent: Path, tmp_path: Path, driver: str) -> tuple[dict, Path]:
    """Run `driver` against the agent in private namespaces: what it printed, and the console file."""
    console = tmp_path / "console.log"
    console.write_text("")
    proc = subprocess.run(["unshare", "--net", "--mount", sys.executable, "-c", driver, str(agent), str(console)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), console


def test_the_oracle_names_pages_that_missed_a_write(agent, tmp_path):
    seen, console = _drive(agent, tmp_path, DRIVER)
    assert seen["clean"]["scan_wrong"] == "0" and seen["clean"]["hot_wrong"] == "0", seen["clean"]
    dirty = seen["dirty"]
    assert dirty["scan_wrong"] == "1" and dirty["hot_wrong"] == "2", dirty
    wrong = dirty["first"].split(",")
    assert f"{hex(seen['sweep'] + 900 * 4096)}:77777:0" in wrong
    assert any(w.startswith(f"{hex(seen['hot'] + 3 * 4096)}:55555:") for w in wrong)
    assert any(w.startswith(f"{hex(seen['small'] + 5 * 4096)}:44444:") for w in wrong)
    # The hot set's finding was reported once and reset; the stale sweep page is still stale.
    assert seen["after"]["hot_wrong"] == "0" and seen["after"]["scan_wrong"] == "1"
    # The writer's own finding went to the console too: evidence that outlives a crashed guest.
    told = console.read_text()
    assert f"LAB-ORACLE-WRONG writer=hot addr={hex(seen['hot'] + 3 * 4096)} found=55555" in told
    assert f"LAB-ORACLE-WRONG writer=hot addr={hex(seen['small'] + 5 * 4096)} found=44444" in told


def test_verify_names_the_first_damaged_word_of_the_fill_pattern(agent, tmp_path):
    seen, console = _drive(agent, tmp_path, DRIVER)
    assert seen["verified"]["bad_words"] == "0", seen["verified"]
    assert seen["verify"] == {"bad_words": "1", "first_bad_offset": str(3 * 4096 + 8)}, seen["verify"]


def test_an_untouched_agent_reports_no_wrong_page(agent, tmp_path):
    """The check can pass: with nothing changed behind its back, a dirtying agent is clean."""
    quiet = DRIVER.replace('with open(f"/proc/{agent.pid}/mem", "r+b", buffering=0) as mem:', "if False:")
    seen, console = _drive(agent, tmp_path, quiet)
    for reading in ("dirty", "after"):
        assert (seen[reading]["scan_wrong"], seen[reading]["sweep_wrong"], seen[reading]["hot_wrong"]) == ("0", "0", "0")
    assert seen["verify"]["bad_words"] == "0", seen["verify"]
    assert "LAB-ORACLE-WRONG" not in console.read_text()


# A page the sweep wrote all-zero in this round, given back its older data: what a destination that keeps a
# zero page's old contents (mutant zero-page-decode-keeps-stale-data) leaves behind.
ZERO_DRIVER = START + r'''
try:
    cmd("dirty 8 4")  # 2 rounds a second over 1024 pages
    where = cmd("oracle_map")
    every, vpn, skip = int(where["zero_every"]), int(where["sweep_vpn"], 16), int(where["skip_classes"], 16)
    time.sleep(1.2)
    clean = cmd("oracle")
    while True:
        state = cmd("oracle")
        rnd, pos, base = int(state["sweep_round"]), int(state["sweep_pos"]), int(state["sweep_base"], 16)
        behind = [p for p in range(pos - 60, pos) if p >= 0 and (p + rnd) % every == 0
                  and not (skip >> ((vpn + p) % 64)) & 1]
        if rnd >= 2 and pos >= 60 and behind:
            break
        time.sleep(0.05)
    page = behind[-1]
    with open(f"/proc/{agent.pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(base + page * 4096)
        mem.write(struct.pack("<Q", rnd - 1))  # its last round's value back, where this round left a zero page
    time.sleep(0.05)
    print(json.dumps({"clean": clean, "seen": cmd("oracle"), "addr": base + page * 4096, "round": rnd,
                      "every": every}))
finally:
    agent.kill()
'''


def test_a_zero_page_given_back_its_old_data_is_named(agent, tmp_path):
    """The sweep writes each page all-zero in one round of every ZERO_EVERY, so that QEMU sends it as a zero
    page; a page holding its older round where this round left zeros is a wrong page."""
    seen, _console = _drive(agent, tmp_path, ZERO_DRIVER)
    assert seen["every"] == 7 and seen["clean"]["scan_wrong"] == "0" and seen["clean"]["sweep_wrong"] == "0", seen
    wrong = seen["seen"]["first"].split(",")
    assert f"{hex(seen['addr'])}:{seen['round'] - 1}:0" in wrong, seen["seen"]


def test_the_outside_oracle_reads_zero_pages_as_the_agent_writes_them():
    """The outside check (a paused destination's memory) follows the same stamp(): a round in progress with its
    zero pages is clean; a zero page holding an older round, or a page holding zero where it should not, is not."""
    every, pages = 7, list(range(40))
    written = [stamp(p, 5 if p < 23 else 4, every) for p in pages]  # round 5 up to page 22, round 4 after
    assert 0 in written and one_boundary_violations(written, pages, every) == []
    stale = list(written)
    zero_now = next(p for p in range(23) if stamp(p, 5, every) == 0)
    stale[zero_now] = 4  # kept its round-4 data where round 5 wrote zeros
    assert one_boundary_violations(stale, pages, every) == [(zero_now, 4, 0)]
    first_round = [stamp(p, 1 if p < 10 else 0, every) for p in pages]  # round 1 in progress over fresh pages
    assert one_boundary_violations(first_round, pages, every) == []
    assert one_boundary_violations([3, 3, 2, 2]) == [] and one_boundary_violations([3, 1, 3, 2]) == [(1, 1, 3)]
