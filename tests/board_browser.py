"""Drive `instructune board` in headless Chromium: start the board, open the page, click through every tab.

Shared by tests/test_board_browser.py (a tiny model, 2 training steps) and docs/board_screenshots.py
(the real default model, a screenshot of each tab). Chromium is Debian's (`chromium` and
`chromium-driver`); nothing here downloads a browser. Every wait polls the page with a generous
deadline, so a busy 2-core machine is slow, not flaky.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = os.environ.get("INSTRUCTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("INSTRUCTUNE_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1800")
SOURCE = Path(__file__).resolve().parents[1] / "src"


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when Chromium, its driver and selenium are present."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} not found: apt-get install {package} (.ci/run installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed: pip install -e '.[board]'"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_board(workdir: Path, port: int, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Run `instructune board` as a user would; returns the process and the address it printed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = open(workdir / "board.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "instructune.cli", "board", "--port", str(port),
                                "--workdir", str(workdir)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"instructune board: (http://\S+)", (workdir / "board.log").read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            raise RuntimeError("the board exited:\n" + (workdir / "board.log").read_text()[-3000:])
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError("the board printed no address in time:\n" + (workdir / "board.log").read_text()[-3000:])


def chromium(profile: Path):
    """A headless Chromium session (Debian's browser and driver, a fresh profile)."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class BoardPage:
    """The board's page in a browser, addressed by the elem_ids the tabs give their widgets."""

    def __init__(self, driver, url: str, timeout_s: float = 60.0) -> None:
        self.driver, self.timeout_s = driver, timeout_s
        driver.get(url)
        self.wait(lambda: self.find("tab-data-button"), "the page to load")

    def find(self, elem_id: str, css: str = ""):
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} {css}".strip())
        return found[0] if found else None

    def wait(self, condition, what: str, timeout_s: float | None = None):
        """Poll `condition` until it returns something true; fail naming `what` and the page's errors."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                result = condition()
            except Exception:  # the element is being re-rendered; look again
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; statuses: {self.statuses()}")
            time.sleep(0.25)

    def statuses(self) -> dict[str, str]:
        return {name: self.value(name) for name in ("data-status", "train-status", "eval-status", "chat-status")
                if self.find(name)}

    def open_tab(self, name: str) -> None:
        self.find(f"tab-{name}-button").click()
        self.wait(lambda: self.find(f"tab-{name}").is_displayed(), f"the {name} tab")

    def click(self, elem_id: str) -> None:
        self.wait(lambda: self.find(elem_id), elem_id).click()

    def type(self, elem_id: str, text: str) -> None:
        """Replace a text box's content as a person would (select all, type)."""
        from selenium.webdriver.common.keys import Keys

        box = self.wait(lambda: self.find(elem_id, "textarea") or self.find(elem_id, "input"), elem_id)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def value(self, elem_id: str) -> str:
        box = self.find(elem_id, "textarea") or self.find(elem_id, "input")
        return (box.get_attribute("value") if box else self.text(elem_id)) or ""

    def text(self, elem_id: str) -> str:
        element = self.find(elem_id)
        return element.text if element else ""

    def wait_value(self, elem_id: str, pattern: str, what: str, timeout_s: float | None = None) -> str:
        """Wait until a box's value matches `pattern`; an `error:` line there fails at once."""
        def check():
            value = self.value(elem_id)
            if value.startswith("error:"):
                raise_now.append(value)
                return True
            return value if re.search(pattern, value) else None
        raise_now: list[str] = []
        value = self.wait(check, what, timeout_s)
        assert not raise_now, f"{what}: the page says {raise_now[0]}"
        return value

    def count(self, elem_id: str, css: str) -> int:
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} {css}"))

    def screenshot(self, path: Path, width: int = 1400) -> None:
        """The whole page (the window grows to its height for the shot, then shrinks back)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, min(int(height) + 40, 6000))
        self.driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.0)  # charts re-lay out at the new size
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(width, 1800)


def run_pipeline(page: BoardPage, *, model: str, train_steps: int, eval_limit: int, max_new_tokens: int,
                 message: str, shots: Path | None = None, train_timeout_s: float = 120.0,
                 eval_timeout_s: float = 120.0) -> dict:
    """What a new user does: quickstart data, preview, mixture, train, evaluate, chat. Returns what the page showed."""
    seen: dict = {}
    # Data: the built-in data, a template preview on its rows, a two-task mixture.
    page.click("data-quickstart")
    page.wait_value("data-status", r"wrote the built-in support data", "the quickstart data")
    page.click("data-preview-button")
    seen["preview"] = page.wait(lambda: "template 0" in page.text("data-preview") and page.text("data-preview"),
                                "the template preview")
    page.click("mix-build")
    page.wait_value("data-status", r"mixture of \d+ examples", "the mixture")
    seen["mixture"] = page.text("mix-shares")
    seen["bars"] = page.wait(lambda: page.count("mix-chart", "g.mark-rect path"), "the proportions chart's bars")
    if shots:
        page.screenshot(shots / "board-data.png")
    # Train: the form from the config model, a short run, the loss chart filling in.
    page.open_tab("train")
    page.type("cfg-run-name", "board")
    page.type("cfg-model-name", model or "null")
    page.type("cfg-train-max-steps", str(train_steps))
    page.type("cfg-train-batch-size", "2")
    page.type("cfg-train-eval-every-n-steps", str(train_steps))
    page.click("train-overwrite")
    page.click("train-start")
    page.wait_value("train-status", r"running|finished", "the training process to start")
    seen["progress"] = page.wait(lambda: re.search(rf"step {train_steps}/{train_steps}", page.text("train-progress"))
                                 and page.text("train-progress"), "the last training step", train_timeout_s)
    seen["loss_lines"] = page.wait(lambda: page.count("train-loss-chart", "g.mark-line path"), "the loss chart")
    page.wait_value("train-status", r"finished", "the run to finish", train_timeout_s)
    seen["files"] = page.wait(lambda: "adapter/" in page.text("train-files") and page.text("train-files"),
                              "the run folder's files")
    if shots:
        page.screenshot(shots / "board-train.png")
    # Evaluate: base against the run on both quickstart tasks.
    page.open_tab("evaluate")
    page.type("eval-base", model)
    page.type("eval-limit", str(eval_limit))
    page.type("eval-max-new", str(max_new_tokens))
    page.click("eval-run")
    page.wait_value("eval-status", r"^done in", "the evaluation", eval_timeout_s)
    seen["table"] = page.wait(lambda: "support_intent" in page.text("eval-table") and page.text("eval-table"),
                              "the before/after table")
    seen["examples"] = page.text("eval-examples")
    if shots:
        page.screenshot(shots / "board-evaluate.png")
    # Chat: the same message to both models.
    page.open_tab("chat")
    page.type("chat-base", model)
    page.type("chat-message", message)
    page.click("chat-send")
    page.wait_value("chat-status", r"^done$", "both answers", eval_timeout_s)
    seen["chat_base"], seen["chat_tuned"] = page.text("chat-base-out"), page.text("chat-tuned-out")
    seen["chat_answers"] = sum(page.count(side, "[data-testid=bot]") for side in ("chat-base-out", "chat-tuned-out"))
    if shots:
        page.screenshot(shots / "board-chat.png")
    page.open_tab("export")
    page.wait(lambda: page.value("export-output") == "exported/board", "the newest run to be picked for export")
    page.click("export-go")
    seen["export"] = page.wait_value("export-result", r"^exported: ", "the export", eval_timeout_s)
    if shots:
        page.screenshot(shots / "board-export.png")
    return seen
