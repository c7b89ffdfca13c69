"""`python -m stream.demo [--out examples]`: rebuild the demo clip and its truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.demo.scene import DEMO
from stream.demo.writer import generate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stream.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples"),
                        help="folder for demo.mp4, demo.srt and demo.truth.json")
    parser.add_argument("--crf", type=int, default=27, help="H.264 quality (lower is larger)")
    args = parser.parse_args()
    clip = generate(DEMO, args.out, crf=args.crf)
    print(f"wrote {clip} ({clip.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
