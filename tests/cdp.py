"""Headless Chromium driven over the DevTools protocol, with the standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from its fd 3 and writes
answers and events to its fd 4, each a JSON message ended by a NUL byte: no websocket, no driver,
no package. A :class:`Browser` opens one page (``width`` x ``height``), and can load a URL, run
JavaScript in it, click, and take a screenshot; a ``confirm()`` the page opens is answered with
``confirm_answer``.

Screenshots for the docs: ``python -m tests.cdp URL OUT.png [TOKEN NAME]`` (signs in first when
given a token).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--hide-scrollbars", "--mute-audio"]

TRAMPOLINE = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"


class BrowserError(Exception):
    """Chromium answered a command with an error, or went away."""


class Browser:
    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 30.0) -> None:
        assert CHROMIUM is not None, "chromium is not installed"
        self.timeout = timeout
        self.confirm_answer = True
        self.dialogs: list[str] = []  # the messages of the dialogs the page opened
        self._profile = tempfile.mkdtemp(prefix="tidegate-cdp-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # chromium's fds 3 and 4, set by a trampoline that then becomes chromium (no shell: dash takes fds 0-9 only)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(to_chrome_r), str(from_chrome_w), CHROMIUM, *FLAGS,
             f"--user-data-dir={self._profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ---------------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page (its session)."""
        return self._call(method, params, self._session)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            answer = self._read()
            if answer.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(answer["params"]["message"])
                self._call("Page.handleJavaScriptDialog", {"accept": self.confirm_answer}, answer.get("sessionId"))
            elif answer.get("id") == message["id"]:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
        raise BrowserError(f"{method}: no answer in {self.timeout} s")

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise BrowserError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # -- what a test does with a page -----------------------------------------------------------------

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait(self, condition: str, timeout: float | None = None) -> Any:
        """Until the JavaScript ``condition`` is truthy (retried across page loads)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = self.js(condition)
                if value:
                    return value
            except BrowserError as err:  # the page is between two documents
                last = err
            time.sleep(0.1)
        raise BrowserError(f"never true: {condition} ({last})")

    def click(self, selector: str) -> None:
        """Click the element (as a user would: a confirm() it opens is answered with ``confirm_answer``)."""
        found = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                        " if (!el) return false; el.click(); return true; })()")
        if not found:
            raise BrowserError(f"no element {selector}")

    def fill(self, selector: str, value: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as out:
            out.write(base64.b64decode(data))


def sign_in(browser: Browser, base: str, token: str, name: str, page: str = "/") -> None:
    browser.open(base + page)
    browser.fill("#sign-in input[name=name]", name)
    browser.fill("#sign-in input[name=token]", token)
    browser.click("#sign-in button")
    browser.wait("document.querySelector('#signed-in') !== null")


if __name__ == "__main__":
    url, out = sys.argv[1], sys.argv[2]
    with Browser() as b:
        if len(sys.argv) > 3:
            base = "/".join(url.split("/")[:3])
            sign_in(b, base, sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "operator", url[len(base):] or "/")
        b.open(url)
        time.sleep(0.5)
        b.screenshot(out)
