"""The progress helper of long steps (lab/util/progress.py): phase lines always, a live line on a
terminal, a reminder at most every interval elsewhere, nothing at all for a step that ends quickly."""
import io

from lab.util.progress import CLEAR, StatusLine, elapsed


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def status(tty: bool, **kwargs):
    clock, stream = Clock(), Stream(tty)
    line = StatusLine("build", stream=stream, clock=clock, **kwargs)
    line._start_ticking = lambda: None  # ticks are driven by the test, not by a thread
    return line, clock, stream


def test_ci_log_gets_phase_lines_and_one_reminder_per_interval():
    say, clock, stream = status(tty=False, interval_s=60)
    say("building QEMU")
    for _ in range(24):  # two minutes of silence, ticked every 5 s
        clock.now += 5
        say.tick()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[build      0s] building QEMU"
    assert len(lines) == 3, lines
    assert lines[1] == "[build     60s] ... still building QEMU (1 min 00 s in this step, 1 min 00 s in all)"
    assert CLEAR not in stream.getvalue()


def test_terminal_gets_one_updating_line():
    say, clock, stream = status(tty=True)
    say("vagrant up")
    clock.now += 42
    say.tick()
    clock.now += 1
    say.tick()
    out = stream.getvalue()
    assert out.count("\n") == 1  # only the phase line is permanent
    assert out.endswith(f"{CLEAR}[build] ... vagrant up (43 s in this step, 43 s in all)")
    say("provisioning")
    assert stream.getvalue().endswith(f"{CLEAR}[build     43s] provisioning\n")
    say.close()
    assert stream.getvalue().endswith("\n")


def test_a_step_that_ends_quickly_says_nothing_and_a_long_one_shows_what_it_held():
    say, clock, stream = status(tty=False, quiet_for_s=3)
    say("lab kvmlab is already up")
    say.close()
    assert stream.getvalue() == ""
    logged = []
    say, clock, stream = status(tty=False, quiet_for_s=3, also=logged.append)
    say("guest image")
    clock.now += 4
    say.tick()
    say("waiting for libvirtd")
    assert stream.getvalue().splitlines() == ["[build      0s] guest image", "[build      4s] waiting for libvirtd"]
    assert logged == stream.getvalue().splitlines()  # the log gets every line, held or not


def test_elapsed_reads_as_a_person_would_say_it():
    assert [elapsed(s) for s in (5, 65, 3725)] == ["5 s", "1 min 05 s", "1 h 02 min"]
