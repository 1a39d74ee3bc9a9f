"""``cxrlib`` command line: generate the phantom, prepare the image cache, make a profile's data ready,
write the README's results section from a run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cxrlib.data.chestxray14 import DataError


def _phantom(args: argparse.Namespace) -> None:
    from cxrlib.data.phantom import generate_phantom

    start = time.perf_counter()
    out = generate_phantom(args.out, n_patients=args.patients, size=args.size, seed=args.seed,
                           max_followups=args.max_followups, overwrite=args.overwrite)
    print(f"phantom written to {out} in {time.perf_counter() - start:.1f} s")


def _prepare(args: argparse.Namespace) -> None:
    from cxrlib.data.cache import prepare_cache

    start = time.perf_counter()
    cache = prepare_cache(args.data_dir, args.size, cache_dir=args.cache_dir, workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"cache of {len(cache.names)} images at {cache.size} px in {cache.directory} ({seconds:.1f} s)")


def _data(args: argparse.Namespace) -> None:
    from cxrlib.config import load_profile
    from cxrlib.data.cache import prepare_cache
    from cxrlib.workspace import ensure_phantom

    profile = load_profile(args.profile)
    folder = args.data_dir or ensure_phantom(profile)
    cache = prepare_cache(folder, profile.data.image_size, workers=profile.data.workers)
    kind = "data" if args.data_dir else "phantom"
    print(f"{kind}: {folder} ({len(cache.names)} images, cached at {cache.size} px)")


def _report(args: argparse.Namespace) -> None:
    from cxrlib.report import has_section, update_readme

    results = args.results or Path("results") / args.profile
    if not has_section(args.readme, args.profile):
        print(f"{args.readme} has no results section for profile {args.profile}; nothing written")
        return
    changed = update_readme(args.readme, results, args.profile)
    print(f"{args.readme}: results section of profile {args.profile} "
          f"{'rewritten from' if changed else 'already matches'} {results}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser("phantom", help="write a synthetic data set in the ChestX-ray14 layout")
    phantom.add_argument("--out", type=Path, required=True, help="output folder")
    phantom.add_argument("--patients", type=int, required=True, help="number of patients")
    phantom.add_argument("--size", type=int, default=256, help="image size in pixels (multiple of 8, <= 1024)")
    phantom.add_argument("--seed", type=int, default=42)
    phantom.add_argument("--max-followups", type=int, default=8, help="cap on scans per patient")
    phantom.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    phantom.set_defaults(run=_phantom)

    prepare = commands.add_parser("prepare", help="decode and resize every image once into a uint8 cache")
    prepare.add_argument("data_dir", type=Path, help="a ChestX-ray14 (or phantom) folder")
    prepare.add_argument("--size", type=int, required=True, help="image size of the cache in pixels")
    prepare.add_argument("--cache-dir", type=Path, default=None,
                         help="where to write the cache (default: DATA_DIR/.cxrlib_cache/SIZEpx)")
    prepare.add_argument("--workers", type=int, default=2, help="decoding processes")
    prepare.set_defaults(run=_prepare)

    data = commands.add_parser("data", help="make a profile's data ready: its phantom (unless --data-dir) and cache")
    data.add_argument("--profile", default="cpu", help="smoke, cpu or paper")
    data.add_argument("--data-dir", type=Path, default=None, help="a ChestX-ray14 folder instead of the phantom")
    data.set_defaults(run=_data)

    report = commands.add_parser("report", help="write the README's results section from results/PROFILE/*.json")
    report.add_argument("--profile", default="cpu", help="the profile whose section to write")
    report.add_argument("--results", type=Path, default=None, help="the run's results (default: results/PROFILE)")
    report.add_argument("--readme", type=Path, default=Path("README.md"), help="the README to update")
    report.set_defaults(run=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataError, ValueError, FileExistsError) as err:
        print(f"cxrlib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
