#!/usr/bin/env python3
"""PPM sidecars of the fixture PNGs, for builds without image codecs.

A build with INTERNVL_WITH_MEDIA=OFF decodes PPM/PGM only; its tests read
`x.ppm` beside every fixture `x.png` (core/testing/fixtures.h,
FixtureImagePath). Run on a COPY of the fixtures:

  scripts/fixture_ppm.py DIR [--rewrite-jsonl]

Every .png under DIR gets a binary PPM (P6) beside it, made by
Image.open(p).convert('RGB') exactly as the official preprocessing opens
images. --rewrite-jsonl also points the training records (*.jsonl) at the
sidecars, so that train_parity_test reads them (the trainer opens what the
records name); it edits the files in DIR, hence a copy.
"""
import argparse
import json
import pathlib
import sys

from PIL import Image


def rewrite_jsonl(path: pathlib.Path) -> bool:
    lines = path.read_text().splitlines()
    changed = False
    out = []
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        record = json.loads(line)
        image = record.get("image")
        names = image if isinstance(image, list) else [image]
        new = []
        for name in names:
            if isinstance(name, str) and name.endswith(".png"):
                ppm = name[: -len(".png")] + ".ppm"
                if (path.parent / ppm).exists():  # names relative to the records' folder
                    name, changed = ppm, True
            new.append(name)
        if image is not None:
            record["image"] = new if isinstance(image, list) else new[0]
        out.append(json.dumps(record, ensure_ascii=False))
    if changed:
        path.write_text("\n".join(out) + "\n")
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--rewrite-jsonl", action="store_true", help="point *.jsonl image fields at the sidecars")
    args = parser.parse_args()
    if not args.dir.is_dir():
        print(f"fixture_ppm: {args.dir} is not a directory", file=sys.stderr)
        return 2
    count = 0
    for png in sorted(args.dir.rglob("*.png")):
        with Image.open(png) as im:
            im.convert("RGB").save(png.with_suffix(".ppm"), format="PPM")
        count += 1
    print(f"fixture_ppm: {count} PPM sidecars under {args.dir}")
    if args.rewrite_jsonl:
        rewritten = [p for p in sorted(args.dir.rglob("*.jsonl")) if rewrite_jsonl(p)]
        print(f"fixture_ppm: {len(rewritten)} .jsonl files point at the sidecars")
    return 0


if __name__ == "__main__":
    sys.exit(main())
