"""Find head CT slices among a split's "MRI": rank every image by how much of its head's rim is a flat white plateau.

A head CT exported in a brain window (level 40, width 80 HU) shows the skull
as one saturated white ring: everything above 80 HU is the top grey level.
An MRI slice has no such ring (cortical bone is dark on every sequence; the
bright scalp fat of a T1 slice is textured, not flat). So the share of the
head's outer band (its outer 15% by distance from the edge) that sits at the
image's top grey level ranks CT above MRI, well enough to review by eye: it is
a screening measure, not a classifier (over-exposed T1 slices rank high too).

It writes ``ranked.csv`` (every image of the split table with its rim share,
highest first) and contact sheets of the ``--top`` highest (``sheet_<k>.png``,
the rank printed on each tile) to review. The verdicts of one such review, on
the real mirror, are in ``metrics/ct_in_sources.json`` and the README
("Head CT slices inside the MRI sources").

    python benchmarks/ct_in_sources.py --split build/split/split.csv --out build/ct_review --top 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from brainmri.core.preprocess import head_mask

RIM_DEPTH = 0.15
"""Outer band of the head: pixels whose distance to the head's edge is below this share of the largest distance."""

SIZE = 256
TILE, COLUMNS, ROWS = 160, 8, 4


def rim_saturation(grey: np.ndarray) -> float:
    """Share of the head's outer band at the head's top grey level (within one level), at 256x256."""
    resized = np.asarray(Image.fromarray(np.asarray(grey, dtype=np.uint8)).resize((SIZE, SIZE)))
    pixels, head = resized.astype(np.float64), head_mask(resized)
    if head is None or not head.any():
        return 0.0
    depth = ndimage.distance_transform_edt(head)
    band = head & (depth < RIM_DEPTH * depth.max())
    saturated = pixels >= pixels[head].max() - 1
    return float((saturated & band).sum() / max(band.sum(), 1))


def contact_sheets(paths: list[str], out: Path) -> list[Path]:
    """Tiles of ``paths`` in rank order, ``COLUMNS x ROWS`` per sheet, the rank written on each."""
    written, per_sheet = [], COLUMNS * ROWS
    for start in range(0, len(paths), per_sheet):
        sheet = Image.new("L", (COLUMNS * TILE, ROWS * TILE))
        for offset, path in enumerate(paths[start : start + per_sheet]):
            tile = Image.open(path).convert("L").resize((TILE, TILE))
            ImageDraw.Draw(tile).text((3, 3), str(start + offset), fill=255)
            sheet.paste(tile, ((offset % COLUMNS) * TILE, (offset // COLUMNS) * TILE))
        written.append(out / f"sheet_{start // per_sheet}.png")
        sheet.save(written[-1])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("build/split/split.csv"), help="the split stage's table")
    parser.add_argument("--out", type=Path, default=Path("build/ct_review"))
    parser.add_argument("--top", type=int, default=128, help="how many of the highest-ranked images to put on sheets")
    args = parser.parse_args()

    table = pd.read_csv(args.split, keep_default_na=False)
    table["rim_saturation"] = [
        round(rim_saturation(np.asarray(Image.open(path).convert("L"))), 4)
        for path in tqdm(table["path"], desc="rim", unit="img")
    ]
    ranked = table.sort_values("rim_saturation", ascending=False, kind="stable").reset_index(drop=True)
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["image_id", "source", "label", "split", "rim_saturation", "original_path", "path"]
    ranked[columns].to_csv(args.out / "ranked.csv", index_label="rank")
    sheets = contact_sheets(list(ranked["path"].head(args.top)), args.out)
    summary = ranked.groupby("source")["rim_saturation"].describe(percentiles=[0.5, 0.99]).round(3)
    print(summary.to_markdown())
    print(f"{args.out / 'ranked.csv'}; {len(sheets)} contact sheets of the top {args.top} in {args.out}")


if __name__ == "__main__":
    main()
