"""A real terminal run of `localllm chat`, in tmux: measures the cold start, asks a question,
and saves a screenshot of the pane. A program, not a test (pytest does not collect it).

    .venv/bin/python tests/tui/terminal_run.py --question "..." --screenshot assets/chat.png

Cold start is timed from launching the command to (1) the prompt box on screen, (2) a key
typed into it echoed back (the box is usable), (3) the model loaded (the status line shows the
context figure). The screenshot is the pane's own cells and colours (`capture-pane -e`),
drawn to SVG by rich and turned into PNG by rsvg-convert when it is installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SESSION = "localllm-chat-run"
DEFAULT_QUESTIONS = ["Write a Python function that reverses a string.", "Now make it reverse the words instead."]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def pane(ansi: bool = False) -> str:
    return tmux("capture-pane", "-p", *(["-e", "-N"] if ansi else []), "-t", SESSION)


def wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate(pane()):
            return time.perf_counter()
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}:\n{pane()}")


def screenshot(path: Path, columns: int) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=columns, force_terminal=True, color_system="truecolor", file=open(os.devnull, "w"))
    # NOTE: decoded whole: tmux carries colours over from one line to the next.
    console.print(Text.from_ansi(pane(ansi=True).rstrip("\n")), no_wrap=True, overflow="crop")
    svg = path.with_suffix(".svg")
    console.save_svg(str(svg), title="localllm chat")
    # NOTE: rsvg drops a no-break space that starts a text run; keep them all.
    svg.write_text(svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1))
    if path.suffix == ".png":
        if shutil.which("rsvg-convert") is None:
            raise SystemExit(f"saved {svg}; no rsvg-convert to make {path} (apt-get install librsvg2-bin)")
        subprocess.run(["rsvg-convert", "-w", str(columns * 12), str(svg), "-o", str(path)], check=True)
        svg.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--question", action="append",
                        help="asked in turn (repeatable; default: a code question and a follow-up)")
    parser.add_argument("--size", default="100x32", help="COLUMNSxROWS of the terminal")
    parser.add_argument("--screenshot", type=Path, help="a .png or .svg to write")
    parser.add_argument("--chat-args", default="--temperature 0 --max-tokens 200")
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.split("x"))
    home = tempfile.mkdtemp(prefix="localllm-chat-")
    localllm = Path(sys.executable).with_name("localllm")
    command = (f"env LOCALLLM_HOME={shlex.quote(home)} COLORTERM=truecolor "
               f"{shlex.quote(str(localllm))} chat {shlex.quote(args.model)} {args.chat_args}")
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    started = time.perf_counter()
    tmux("new-session", "-d", "-s", SESSION, "-x", str(columns), "-y", str(rows), command)
    try:
        drawn = wait_for(lambda s: f"Message {args.model}" in s, 30, "the prompt box")
        tmux("send-keys", "-t", SESSION, "-l", "Hi")
        usable = wait_for(lambda s: "│ Hi" in s, 30, "the typed text")
        loaded = wait_for(lambda s: "ctx " in s and "loading:" not in s, 120, "the model")
        print(f"prompt box drawn: {drawn - started:.2f} s; usable (typed text shown): {usable - started:.2f} s; "
              f"model loaded: {loaded - started:.2f} s")
        tmux("send-keys", "-t", SESSION, "C-u")
        for question in args.question or DEFAULT_QUESTIONS:
            asked = time.perf_counter()
            tmux("send-keys", "-t", SESSION, "-l", question)
            tmux("send-keys", "-t", SESSION, "Enter")
            wait_for(lambda s: "answering" in s, 30, "the answer to start")
            answered = wait_for(lambda s: "answering" not in s, 300, "the answer to end")
            print(f"{question!r} answered in {answered - asked:.1f} s")
        time.sleep(0.3)
        print(pane())
        if args.screenshot:
            screenshot(args.screenshot, columns)
            print(f"screenshot: {args.screenshot}")
    finally:
        subprocess.run(["tmux", "send-keys", "-t", SESSION, "C-q"], capture_output=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
