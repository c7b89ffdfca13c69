"""`python -m stream.demo [--scene NAME] [--out DIR]`: rebuild a scripted clip and its truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.demo.scene import SCENES
from stream.demo.writer import generate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stream.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples"),
                        help="folder for demo.mp4, demo.srt and demo.truth.json")
    parser.add_argument("--crf", type=int, default=27, help="H.264 quality (lower is larger)")
    parser.add_argument("--scene", choices=sorted(SCENES), default="demo",
                        help="which scripted conversation (its name is the file stem)")
    args = parser.parse_args()
    clip = generate(SCENES[args.scene], args.out, stem=args.scene, crf=args.crf)
    print(f"wrote {clip} ({clip.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
