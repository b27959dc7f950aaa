"""Headless Chromium for the tests: open local pages and report what failed to load.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no WebSocket package is needed.
Without a browser the tests skip with the reason; with ``CI=true`` they fail instead, so that CI
cannot pass without running them.
"""

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page: waits for every image to decode and every audio element to read its
# metadata (preload="none" elements are asked to load), and lists the links.
CHECK_PAGE = """
(async () => {
  const brokenImages = [];
  for (const image of document.images) {
    try { await image.decode(); } catch (e) { brokenImages.push(image.src); continue; }
    if (!image.naturalWidth) brokenImages.push(image.src);
  }
  const audios = [...document.querySelectorAll("audio")];
  const brokenAudio = [];
  for (const audio of audios) {
    const ok = await new Promise((resolve) => {
      if (audio.readyState >= 1) return resolve(true);
      audio.addEventListener("loadedmetadata", () => resolve(true), {once: true});
      audio.addEventListener("error", () => resolve(false), {once: true});
      for (const source of audio.querySelectorAll("source"))
        source.addEventListener("error", () => resolve(false), {once: true});
      setTimeout(() => resolve(audio.readyState >= 1), 15000);
      audio.preload = "metadata";
      audio.load();
    });
    if (!ok) brokenAudio.push(audio.currentSrc || audio.src);
  }
  const links = [...document.querySelectorAll("a[href]")].map((a) => ({
    href: a.href, raw: a.getAttribute("href"),
    target: a.hash ? !!document.getElementById(decodeURIComponent(a.hash.slice(1))) : null,
  }));
  return JSON.stringify({images: document.images.length, brokenImages,
                         audio: audios.length, brokenAudio, links});
})()
"""


def find_chromium():
    """The browser's path (``$CHROMIUM`` or the first of :data:`NAMES` on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_skip():
    """The browser's path; skips the test without one, or fails it with ``CI=true``."""
    path = find_chromium()
    if path is None:
        reason = ("no Chromium found (looked for $CHROMIUM and " + ", ".join(NAMES) + " on "
                  "PATH); `apt-get install chromium` (make test does so when run as root)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    return path


def _high_fd(fd):
    """``fd`` moved to a number >= 10, clear of the 3 and 4 the browser reads and writes."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Chromium:
    """One headless browser process, driven over the DevTools pipe.

    Args:
        path: the browser executable.
        timeout: seconds any one command may take.
    """

    def __init__(self, path, timeout=60.0):
        self.timeout = timeout
        to_browser_r, self._to_browser = (_high_fd(fd) for fd in os.pipe())
        self._from_browser, from_browser_w = (_high_fd(fd) for fd in os.pipe())
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--mute-audio",
            "--autoplay-policy=no-user-gesture-required", "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}", "about:blank",
        ]
        # A Python step puts the pipe ends on descriptors 3 and 4, then becomes the browser.
        hop = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
               "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")
        self._process = subprocess.Popen(
            [sys.executable, "-c", hop, str(to_browser_r), str(from_browser_w), path, *flags],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._process.poll() is None:
            try:
                self.send("Browser.close")
            except (OSError, RuntimeError, TimeoutError):
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method, session=None, **params):
        """Sends one command and returns its result (events meanwhile go to ``events``)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, session, deadline):
        """Waits for the event ``method`` of ``session`` (or one already received)."""
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"Chromium sent no {method} in time")
            self.events.append(self._receive(deadline))

    def _receive(self, deadline=None):
        deadline = deadline or time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self._process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def inspect(self, page):
        """Opens the local file ``page`` and returns what loaded: ``images`` / ``audio`` (counts),
        ``broken_images`` / ``broken_audio`` (their URLs), ``failed_requests`` (URL and error
        of every request that failed), ``broken_links`` (links to missing local files or to
        missing anchors), ``links`` (every link's href)."""
        url = Path(page).resolve().as_uri()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            self.send("Network.enable", session)
            self.send("Page.enable", session)
            self.send("Page.navigate", session, url=url)
            self.wait_for("Page.loadEventFired", session, time.monotonic() + self.timeout)
            result = self.send("Runtime.evaluate", session, expression=CHECK_PAGE,
                               awaitPromise=True, returnByValue=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"the page check failed: {result['exceptionDetails']}")
            found = json.loads(result["result"]["value"])
        finally:
            self.send("Target.closeTarget", targetId=target)
        requests = {e["params"]["requestId"]: e["params"]["request"]["url"]
                    for e in self.events if e.get("method") == "Network.requestWillBeSent"
                    and e.get("sessionId") == session}
        # net::ERR_ABORTED: a media element cancels its request once it has what it needs
        # (a WAV that does not decode is caught as broken audio instead).
        failed = [(requests.get(e["params"]["requestId"], "?"), e["params"]["errorText"])
                  for e in self.events if e.get("method") == "Network.loadingFailed"
                  and e.get("sessionId") == session
                  and e["params"]["errorText"] != "net::ERR_ABORTED"]
        self.events = [e for e in self.events if e.get("sessionId") != session]
        broken_links = []
        for link in found["links"]:
            parsed = urlparse(link["href"])
            if parsed.scheme == "file" and not Path(unquote(parsed.path)).exists():
                broken_links.append(link["raw"])
            elif link["target"] is False and parsed.path == urlparse(url).path:
                broken_links.append(link["raw"])
        return {"images": found["images"], "broken_images": found["brokenImages"],
                "audio": found["audio"], "broken_audio": found["brokenAudio"],
                "failed_requests": failed, "broken_links": broken_links,
                "links": [link["raw"] for link in found["links"]]}
