"""Progress of long steps (a QEMU build, a stack download, VMs coming up, a long migration) without
flooding CI logs.

`StatusLine` takes a step's messages through the usual `progress(msg)` callback:

- every message is printed once, as a line of its own (the history of the phases);
- on a terminal, one line under them is redrawn every second: the current phase and how long it
  has run, so a step that says nothing for minutes still shows it is alive;
- elsewhere (CI logs, files), a reminder line comes at most every `interval_s` seconds while a
  phase runs silently (`... still building QEMU (2 min 30 s in this step)`), never more;
- with `quiet_for_s`, a step that ends sooner says nothing at all (a lab that is already up, a
  cached build): its messages are held until the step has run that long.

It is a context manager; `close()` clears the live line. Thread-safe: xdist workers are processes,
but a step may report from a helper thread.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Callable, TextIO

CLEAR = "\r\x1b[K"


def elapsed(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class StatusLine:
    """The `progress` callback of a long step: phase lines, plus a live line or a slow reminder."""

    def __init__(self, label: str, stream: TextIO | None = None, interval_s: float = 60.0,
                 tty: bool | None = None, also: Callable[[str], None] | None = None, quiet_for_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.stream = stream if stream is not None else sys.__stderr__
        self.tty = self._isatty() if tty is None else tty
        self.interval_s = interval_s
        self.also = also  # e.g. an append to a log file: every phase line goes there too
        self.quiet_for_s = quiet_for_s
        self._held: list[str] = []
        self.clock = clock
        self.started = clock()
        self.phase = ""
        self.phase_started = self.started
        self.last_output = self.started
        self._drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def __call__(self, msg: str) -> None:
        line = f"[{self.label} {self.clock() - self.started:6.0f}s] {msg}"
        with self._lock:
            self.phase, self.phase_started = msg, self.clock()
            if self.also is not None:
                self.also(line)
            self._held.append(line)
            self._release()
        self._start_ticking()

    def _release(self) -> None:
        """Print the held phase lines once the step has run past quiet_for_s (lock held)."""
        if self._held and self.clock() - self.started >= self.quiet_for_s:
            self._write("".join(f"{held}\n" for held in self._held), permanent=True)
            self._held.clear()

    def tick(self) -> None:
        """Redraw the live line (terminal) or print a reminder if the phase has been quiet too long."""
        with self._lock:
            self._release()
            if not self.phase or self._held:
                return
            now = self.clock()
            status = f"{self.phase[:60]} ({elapsed(now - self.phase_started)} in this step, " \
                     f"{elapsed(now - self.started)} in all)"
            if self.tty:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self._write(f"{CLEAR}[{self.label}] ... {status}"[:width + len(CLEAR)], permanent=False)
            elif now - self.last_output >= self.interval_s:
                self._write(f"[{self.label} {now - self.started:6.0f}s] ... still {status}\n", permanent=True)

    def _write(self, text: str, permanent: bool) -> None:
        try:
            if permanent and self._drawn:
                self.stream.write(CLEAR)
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            return  # a closed terminal does not stop the step
        self._drawn = not permanent
        if permanent:
            self.last_output = self.clock()

    def _start_ticking(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"progress:{self.label}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        period = 1.0 if self.tty else min(5.0, self.interval_s)
        while not self._stop.wait(period):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self._drawn:
                self._write(CLEAR, permanent=True)

    def __enter__(self) -> "StatusLine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
