"""A rendered page checked in headless Chromium (Debian's `chromium`), driven through the Chrome
DevTools Protocol over `--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4, so no
port, no websocket library and no driver binary are needed, and nothing leaves the machine.

`check_page` loads a file, waits for it, and returns what a person would notice: console errors,
uncaught exceptions, failed loads, every URL the page requested, facts about the DOM (tables,
plots and whether each image decoded) and the screenshots asked for.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import MissingToolError, ReportError
from lab.util.process import spawn, terminate_group

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--remote-debugging-pipe")
VIEWPORT = (1280, 900)
DOM_FACTS = """JSON.stringify({
  sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
  tables: [...document.querySelectorAll('table.data')].map(t => ({id: t.id, cls: t.className, rows: t.rows.length})),
  images: [...document.images].map(i => ({src: i.getAttribute('src'), alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                          width: i.naturalWidth})),
  absent: document.querySelectorAll('.absent').length,
  links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  title: document.title})"""
RECT = "JSON.stringify((el => { const r = el.getBoundingClientRect(); " \
       "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })(document.querySelector(%s)))"


@dataclass
class PageCheck:
    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dom: dict = field(default_factory=dict)
    screenshots: dict[str, Path] = field(default_factory=dict)

    @property
    def remote_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:"))]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise MissingToolError("chromium: not installed (make setup installs Debian's chromium package)")


def _high_fd(fd: int) -> int:
    """A copy of fd numbered 10 or above (so moving it to 3 or 4 in the child clobbers nothing)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _Pipe:
    """CDP over the browser's pipe: commands out, replies and events in, NUL-separated JSON."""

    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.next_id = 0
        self.replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.events.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self.replies:
                    self.replies[msg["id"]].put(msg)
                else:
                    self.events.put(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        ident = self.next_id
        self.replies[ident] = queue.Queue()
        msg = {"id": ident, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        try:
            reply = self.replies[ident].get(timeout=timeout)
        except queue.Empty:
            raise ReportError(f"chromium: no answer to {method} in {timeout:.0f} s") from None
        if "error" in reply:
            raise ReportError(f"chromium: {method}: {reply['error'].get('message')}")
        return reply.get("result", {})


def _note(check: PageCheck, msg: dict) -> bool:
    """Record an event; True on the page's load event."""
    method, params = msg.get("method", ""), msg.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        check.console_errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in params.get("args", [])))
    elif method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        check.console_errors.append("exception: " + (details.get("exception", {}).get("description")
                                                     or details.get("text", "")))
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        check.console_errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    elif method == "Network.requestWillBeSent":
        check.requests.append(params.get("request", {}).get("url", ""))
    elif method == "Network.loadingFailed" and not params.get("canceled"):
        check.console_errors.append(f"load failed: {params.get('errorText')}")
    return method == "Page.loadEventFired"


def _screenshot(pipe: _Pipe, session: str, selector: str | None, path: Path) -> Path:
    params: dict = {"format": "png"}
    if selector:
        found = pipe.call("Runtime.evaluate", {"expression": RECT % json.dumps(selector), "returnByValue": True},
                          session)
        rect = json.loads(found.get("result", {}).get("value") or "null") if found else None
        if not rect or not rect.get("width"):
            raise ReportError(f"screenshot: nothing on the page matches {selector!r}")
        params.update(clip={**rect, "scale": 1}, captureBeyondViewport=True)
    shot = pipe.call("Page.captureScreenshot", params, session, timeout=60)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def check_page(page: Path, screenshots: dict[Path, str | None] | None = None, timeout: float = 60) -> PageCheck:
    """Open `page` in a fresh headless Chromium and report on it.

    screenshots: {png path: CSS selector of the element to capture, or None for the viewport (top of page)}.
    """
    url = Path(page).resolve().as_uri()
    check = PageCheck(url)
    profile = tempfile.mkdtemp(prefix="kvm-report-chromium-")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    child_in, child_out = _high_fd(to_browser_r), _high_fd(from_browser_w)
    argv = ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out}', chromium(), *FLAGS,
            f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"]
    with open(Path(profile) / "chromium.log", "w") as log:
        proc = spawn(argv, log=log, pass_fds=(child_in, child_out), error=MissingToolError)
    os.close(child_in)
    os.close(child_out)
    pipe = _Pipe(to_browser_w, from_browser_r)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                         "deviceScaleFactor": 1, "mobile": False}, session)
        pipe.call("Page.navigate", {"url": url}, session)
        deadline, loaded = time.monotonic() + timeout, False
        while not loaded:
            left = deadline - time.monotonic()
            try:
                msg = pipe.events.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise ReportError(f"chromium: {url} did not finish loading in {timeout:.0f} s") from None
            if msg is None:
                raise ReportError(f"chromium exited while loading {url} (log: {profile}/chromium.log)")
            loaded = _note(check, msg)
        time.sleep(0.3)  # late console messages
        while not pipe.events.empty():
            msg = pipe.events.get()
            if msg is not None:
                _note(check, msg)
        facts = pipe.call("Runtime.evaluate", {"expression": DOM_FACTS, "returnByValue": True}, session)
        check.dom = json.loads(facts.get("result", {}).get("value") or "{}")
        for path, selector in (screenshots or {}).items():
            check.screenshots[str(path)] = _screenshot(pipe, session, selector, Path(path))
        try:
            pipe.call("Browser.close", timeout=10)
        except ReportError:
            pass
    finally:
        _wait_exit(proc, 5)  # Browser.close asked it to leave; anything still there is ended
        terminate_group(proc, grace=5)
        os.close(to_browser_w)
        os.close(from_browser_r)
        shutil.rmtree(profile, ignore_errors=True)
    return check


def _wait_exit(proc, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
