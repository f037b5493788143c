"""Screenshots of each tab of `instructune board` for docs/board.md, on the real default model.

Runs the browser test's flow (tests/board_browser.py) with SmolLM2-135M-Instruct instead of the tiny
model: quickstart data, a short LoRA run, an evaluation, a chat, an export, and a full-page PNG of
each tab into docs/board/. Needs Debian's chromium and chromium-driver and the board extra.

    make board-screenshots          # or: python docs/board_screenshots.py --steps 10 --eval-limit 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import board_browser  # noqa: E402


def shrink(path: Path, colours: int = 128) -> None:
    """Palette PNGs: screenshots of a flat page lose nothing visible and weigh a third."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    parser.add_argument("--eval-limit", type=int, default=8, help="examples per task in the evaluation")
    parser.add_argument("--out", default=str(ROOT / "docs" / "board"), help="folder for the PNGs")
    args = parser.parse_args()
    reason = board_browser.missing_browser()
    if reason:
        print(f"board_screenshots: {reason}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="board-shots-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        started = time.perf_counter()
        process, url = board_browser.start_board(work, board_browser.free_port())
        driver = board_browser.chromium(Path(tmp) / "profile")
        try:
            page = board_browser.BoardPage(driver, url, timeout_s=300)
            seen = board_browser.run_pipeline(
                page, model="", train_steps=args.steps, eval_limit=args.eval_limit, max_new_tokens=48,
                message="Hi, where is my order #48213? It was due on Monday.", shots=out,
                train_timeout_s=3600, eval_timeout_s=3600,
            )
        finally:
            driver.quit()
            process.terminate()
            process.wait(60)
    for png in sorted(out.glob("board-*.png")):
        shrink(png)
        print(f"{png.relative_to(ROOT)}: {png.stat().st_size / 1024:.0f} KB")
    print(f"done in {time.perf_counter() - started:.0f} s; last progress: {seen['progress']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
