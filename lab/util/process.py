"""The one way the harness runs a command and ends a process.

`run` turns a failed or missing command into a one-line LabError (of the
caller's subclass) naming the command and its last meaningful output line;
`stream` yields output lines as they come; `terminate` is the one shutdown
routine (SIGTERM, a grace period, then SIGKILL), always by PID.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, Sequence

from lab.errors import LabError

SETUP_HINT = "run `make setup`"


def _last_line(text: str, noise: Callable[[str], bool] = lambda _line: False) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not noise(ln.strip())]
    return lines[-1] if lines else ""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | bytes | None = None,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    error: type[LabError] = LabError,
    what: str | None = None,
    fix: str = "",
    log: IO[str] | None = None,
    text: bool = True,
    noise: Callable[[str], bool] = lambda _line: False,
) -> subprocess.CompletedProcess:
    """Run argv and capture its output (or append it to `log`); on failure raise `error` in one line.

    `fix` is appended to the message (what the user should do); `noise` filters
    lines (e.g. apt warnings) out of the one quoted in the message.
    """
    name = what or " ".join(str(a) for a in argv)
    where = {"stdout": log, "stderr": subprocess.STDOUT} if log else {"capture_output": True}
    if log:
        log.write(f"\n$ {' '.join(str(a) for a in argv)}" + (f"  (in {cwd})" if cwd else "") + "\n")
        log.flush()
    try:
        proc = subprocess.run([str(a) for a in argv], text=text, timeout=timeout, input=input, cwd=cwd,
                              env=dict(env) if env is not None else None,
                              stdin=None if input is not None else subprocess.DEVNULL, **where)
    except FileNotFoundError:
        raise error(f"{argv[0]}: command not found ({fix or SETUP_HINT})") from None
    except subprocess.TimeoutExpired:
        raise error(f"{name}: timed out after {timeout:.0f} s" + (f"; {fix}" if fix else "")) from None
    if check and proc.returncode != 0:
        if log:
            detail = f"exit status {proc.returncode}; see {getattr(log, 'name', 'the log')}"
        else:
            out = proc.stderr or proc.stdout or ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            detail = _last_line(out, noise)[:300] or f"exit status {proc.returncode}"
        raise error(f"{name}: {detail}" + (f"; {fix}" if fix else ""))
    return proc


def ok(argv: Sequence[str], timeout: float = 30) -> bool:
    """True when argv exits 0; never raises for a failing or missing command."""
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def stream(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    error: type[LabError] = LabError,
    what: str | None = None,
    tail_lines: int = 6,
    check: bool = True,
    errors: str | None = None,
) -> Iterator[str]:
    """Yield the command's output lines as they come (stderr merged); on failure raise `error` with the tail.

    `check=False` leaves the exit status to the caller (for tools whose status says nothing);
    `errors="replace"` decodes output that is not valid text instead of failing on it.
    Closing the generator early ends the command's whole process group.
    """
    name = what or " ".join(str(a) for a in argv)
    try:
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=dict(env) if env is not None else None,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors=errors,
                                stdin=subprocess.DEVNULL, bufsize=1, start_new_session=True)
    except FileNotFoundError:
        raise error(f"{argv[0]}: command not found ({SETUP_HINT})") from None
    tail: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-tail_lines:]
            yield line
    finally:
        if proc.poll() is None:  # the caller stopped early (or was interrupted): end the whole group
            terminate_group(proc)
        rc = proc.wait()
    if check and rc != 0:
        raise error(f"{name} failed (exit {rc}): " + " / ".join(t.strip() for t in tail if t.strip()))


def attached(argv: Sequence[str], *, env: Mapping[str, str] | None = None, error: type[LabError] = LabError) -> int:
    """Run a command on this terminal (its output is the user's to read, e.g. a pytest run) and return its exit
    status; an interrupt reaches it too, as the terminal's process group's."""
    try:
        return subprocess.run([str(a) for a in argv], env=dict(env) if env is not None else None).returncode
    except FileNotFoundError:
        raise error(f"{argv[0]}: command not found ({SETUP_HINT})") from None


def spawn(argv: Sequence[str], *, log: IO | None = None, pass_fds: Sequence[int] = (),
          error: type[LabError] = LabError) -> subprocess.Popen:
    """Start a long-lived helper (e.g. a headless browser) in its own session; end it with terminate_group."""
    try:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if log else subprocess.DEVNULL, pass_fds=tuple(pass_fds),
                                start_new_session=True)
    except FileNotFoundError:
        raise error(f"{argv[0]}: command not found ({SETUP_HINT})") from None


def alive(pid: int) -> bool:
    """True for a running process; a zombie is not alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def reap_children() -> None:
    """Collect this process's exited children so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def terminate(pids: set[int] | list[int], grace: float = 3.0) -> None:
    """SIGTERM each PID, wait up to `grace` seconds, SIGKILL what is left. Only PIDs the lab recorded."""
    pids = {p for p in pids if p > 0}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        reap_children()
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    reap_children()


def terminate_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """The same for a child started in its own session: its whole process group, then reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll predicate until it returns something truthy (returned) or timeout passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
