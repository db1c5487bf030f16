"""Dedup speed: fingerprinting throughput on real images, and the pair search on 10k to 1M hashes.

    python benchmarks/bench_dedup.py --mirror ../shared/datasets --images 2000 --sizes 10000,100000,1000000

1. Hashing: ``--images`` real images, an equal share from each archive of the local mirror, are
   decoded and written as the merge stage writes them (8-bit grey PNG at source resolution) into a
   temporary folder (deleted afterwards), then fingerprinted with ``compute_fingerprints`` and the
   ``dedup`` params of ``params.yaml``, once per worker count; timings include starting the processes.
2. Pair search: ``hamming_pairs`` (the index) at the working radius (``dedup.max_hamming``) on
   synthetic hashes, and the all-pairs scan where it is affordable (``--scan-up-to``). The synthetic
   hashes keep the structure of real ones: each is a real pHash from step 1 (a "template") with every
   bit flipped with probability ``--flip`` (so the per-bit biases of real hashes and clusters of
   look-alike slices are kept: hashes from one template are ~16 bits apart instead of ~31, so at 1M
   hashes about 5e-4 of all pairs are within 16 bits, against 1e-3 in the real sample, whose share is
   mostly its own copies), and 1% of them get a planted near copy (0 to radius bits flipped). The table
   checks that every planted pair is found and, where the scan ran, that the index returns exactly the
   scan's pairs. The distance distribution of random pairs is printed for the real and the synthetic
   hashes side by side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from brainmri.config import load_config
from brainmri.core.imaging import encode_png
from brainmri.dataset.fingerprints import compute_fingerprints, hamming_pairs, hamming_pairs_scan
from dedup_threshold_study import image_members, read_grey

ARCHIVES = (
    "figshare-cheng2017-jpg.zip",
    "kaggle-brain-tumor-mri-dataset.zip",
    "br35h-no-tumor-jpg.zip",
    "br35h-yes-bbox.zip",
)


def write_real_images(mirror: Path, count: int, folder: Path, seed: int) -> list[str]:
    """Decode ``count`` images (an equal share per archive, drawn with ``seed``) into grey PNGs in ``folder``."""
    rng = np.random.default_rng(seed)
    paths = []
    for archive in ARCHIVES:
        members = image_members(mirror / archive)
        for member in rng.choice(members, min(count // len(ARCHIVES), len(members)), replace=False):
            path = folder / f"{len(paths):06d}.png"
            path.write_bytes(encode_png(np.asarray(read_grey(str(mirror / archive), str(member)))))
            paths.append(str(path))
    return paths


def synthetic_hashes(
    templates: np.ndarray, n: int, flip: float, radius: int, rng: np.random.Generator
) -> tuple[np.ndarray, set]:
    """``n`` hashes made from real ``templates`` (see the module docstring) and the planted pairs ``(i, j)``."""
    words = templates.shape[1]
    planted_count = n // 100
    base = templates[rng.integers(0, len(templates), n - planted_count)]
    noise = np.packbits(rng.random((len(base), 64 * words)) < flip, axis=1, bitorder="little").view(np.uint64)
    hashes = base ^ noise
    sources = rng.choice(len(hashes), planted_count, replace=False)
    copies = hashes[sources].copy()
    flips = np.zeros((planted_count, 64 * words), dtype=bool)
    for row, k in enumerate(rng.integers(0, radius + 1, planted_count)):
        flips[row, rng.choice(64 * words, k, replace=False)] = True
    copies ^= np.packbits(flips, axis=1, bitorder="little").view(np.uint64)
    hashes = np.concatenate([hashes, copies])
    order = rng.permutation(len(hashes))
    position = np.argsort(order)
    planted = {tuple(sorted((int(position[s]), int(position[len(base) + c])))) for c, s in enumerate(sources)}
    return hashes[order], planted


def distance_profile(hashes: np.ndarray, rng: np.random.Generator, pairs: int = 200_000) -> str:
    a, b = rng.integers(0, len(hashes), (2, pairs))
    keep = a != b
    d = np.bitwise_count(hashes[a[keep]] ^ hashes[b[keep]]).sum(axis=1)
    return f"mean {d.mean():.1f}, sd {d.std():.1f}, P(d<=8) {np.mean(d <= 8):.1e}, P(d<=16) {np.mean(d <= 16):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--images", type=int, default=2000, help="real images to fingerprint")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated worker counts")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="synthetic hash counts for the pair search")
    parser.add_argument("--scan-up-to", type=int, default=100_000, help="also run the all-pairs scan up to this size")
    parser.add_argument("--flip", type=float, default=0.15, help="bit-flip probability from template to synthetic hash")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config(args.params).dedup
    rng = np.random.default_rng(args.seed)
    print(
        f"dedup params: frame_spread {cfg.frame_spread}, hash_size {cfg.hash_size}, max_hamming {cfg.max_hamming}, "
        f"thumb_size {cfg.thumb_size}, min_correlation {cfg.min_correlation}; {os.cpu_count()} cores\n"
    )

    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        paths = write_real_images(args.mirror, args.images, Path(tmp), args.seed)
        print("| fingerprinting real images | workers | images | seconds | images/s |\n|---|---:|---:|---:|---:|")
        for workers in (int(w) for w in args.workers.split(",")):
            started = time.perf_counter()
            prints = compute_fingerprints(
                paths, paths, cfg.hash_size, cfg.thumb_size, workers, frame_spread=cfg.frame_spread
            )
            seconds = time.perf_counter() - started
            print(
                f"| pHash + thumbnail (core frame) | {workers} | {len(paths)} | {seconds:.1f} | "
                f"{len(paths) / seconds:.0f} |"
            )
    templates = prints.hashes

    print(f"\nrandom-pair Hamming distances: real {distance_profile(templates, rng)}")
    print(
        "\n| pair search | hashes | radius | pairs found | planted found | seconds | index = scan |\n"
        "|---|---:|---:|---:|---:|---:|---|"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        hashes, planted = synthetic_hashes(templates, n, args.flip, cfg.max_hamming, rng)
        if n == max(int(s) for s in args.sizes.split(",")):
            print(f"| (synthetic, {n} hashes: {distance_profile(hashes, rng)}) | | | | | | |")
        started = time.perf_counter()
        i, j, d = hamming_pairs(hashes, cfg.max_hamming)
        seconds = time.perf_counter() - started
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        same = "not run"
        if n <= args.scan_up_to:
            started = time.perf_counter()
            si, sj, sd = hamming_pairs_scan(hashes, cfg.max_hamming)
            scan_seconds = time.perf_counter() - started
            same = (
                f"{np.array_equal(i, si) and np.array_equal(j, sj) and np.array_equal(d, sd)} "
                f"(scan {scan_seconds:.1f} s)"
            )
        print(
            f"| index | {n} | {cfg.max_hamming} | {len(i)} | {len(planted & found)}/{len(planted)} | "
            f"{seconds:.1f} | {same} |"
        )


if __name__ == "__main__":
    main()
