"""Summarise py-spy collapsed stacks (``py-spy record --format raw``): the top functions.

For each function: the share of samples in which it is running itself
(self) and in which it is anywhere on the stack (total).

    python -m bench.profile_top bench/results/profiles/callwire-single.txt --top 25
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: py-spy frames look like "name (path/to/file.py:123)"; lines are dropped for grouping.
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """Name a frame as ``function (file)``, shortening site-packages paths."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['name']} ({path})"


def summarise(path: Path) -> tuple[int, Counter, Counter]:
    """Return (samples, self counts, total counts) of one collapsed-stack file."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        weight = int(count)
        samples += weight
        frames = [frame_key(f) for f in stack.split(";")]
        own[frames[-1]] += weight
        for key in set(frames):
            total[key] += weight
    return samples, own, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_top",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--match", default="", help="only functions whose key contains this")
    args = parser.parse_args(argv)
    for path in args.files:
        samples, own, total = summarise(path)
        print(f"\n{path.name}: {samples} samples\n")
        for title, counts in (("self", own), ("total", total)):
            print(f"| {title} % | function (file) |\n|---:|---|")
            shown = 0
            for key, count in counts.most_common():
                if args.match not in key:
                    continue
                print(f"| {100 * count / max(samples, 1):.1f} | {key} |")
                shown += 1
                if shown >= args.top:
                    break
            print()


if __name__ == "__main__":
    main()
