"""Decode every radiograph once, resize it, and keep a uint8 array on disk for fast loading.

Decoding 1024 px PNGs dominates data loading; training reads a memory-mapped ``(N, S, S)`` uint8
array instead. A cache folder holds::

    images.u8      raw uint8 array, N * S * S bytes, rows in index order
    index.json     image names (row order), size, source folder
    done.u8        one byte per row: 1 once that row is written (makes preparation resumable)
    complete.json  written last; a cache without it is never opened

so an interrupted ``prepare`` resumes where it stopped and never leaves a cache that looks complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrlib.data.chestxray14 import (DataError, ImageLocator, find_metadata_file, load_image, read_metadata,
                                     read_official_lists)

ARRAY_FILE, INDEX_FILE, DONE_FILE, COMPLETE_FILE = "images.u8", "index.json", "done.u8", "complete.json"
_CHUNK = 64


def default_cache_dir(data_dir: str | Path, size: int) -> Path:
    return Path(data_dir) / ".cxrlib_cache" / f"{size}px"


@dataclass(frozen=True)
class ImageCache:
    """A prepared cache: ``array[i]`` is image ``names[i]`` as (S, S) uint8."""

    directory: Path
    names: tuple[str, ...]
    size: int

    @classmethod
    def open(cls, directory: str | Path) -> "ImageCache":
        directory = Path(directory)
        index_path = directory / INDEX_FILE
        if not (directory / COMPLETE_FILE).is_file():
            raise DataError(directory, "cache is incomplete (preparation did not finish); run `cxrlib prepare` again")
        try:
            index = json.loads(index_path.read_text())
            names, size = tuple(index["names"]), int(index["size"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(index_path, f"unreadable cache index ({err})") from err
        expected = len(names) * size * size
        actual = (directory / ARRAY_FILE).stat().st_size if (directory / ARRAY_FILE).is_file() else -1
        if actual != expected:
            raise DataError(directory / ARRAY_FILE,
                            f"cache index does not match its array: index lists {len(names)} images of "
                            f"{size}x{size} ({expected} bytes) but the array has {actual} bytes")
        return cls(directory, names, size)

    @cached_property
    def array(self) -> np.ndarray:
        return np.memmap(self.directory / ARRAY_FILE, dtype=np.uint8, mode="r",
                         shape=(len(self.names), self.size, self.size))

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {name: row for row, name in enumerate(self.names)}

    def rows(self, names) -> np.ndarray:
        try:
            return np.fromiter((self._row_of[n] for n in names), dtype=np.int64)
        except KeyError as err:
            raise DataError(self.directory, f"image {err.args[0]} is not in the cache") from None

    def get(self, names) -> np.ndarray:
        return np.asarray(self.array[self.rows(names)])


def _decode_rows(task: tuple[str, int, list[tuple[int, str]]]) -> list[int]:
    """Worker: decode and write a chunk of rows straight into the memory-mapped array."""
    array_path, size, items = task
    array = np.memmap(array_path, dtype=np.uint8, mode="r+")
    array = array.reshape(-1, size, size)
    for row, path in items:
        array[row] = load_image(path, size)
    # no msync: a shared mapping's dirty pages outlive the process, so an interrupted run loses
    # nothing that ``done`` marks as written (only a machine crash could, as for any file write)
    return [row for row, _ in items]


def prepare_cache(data_dir: str | Path, size: int, *, cache_dir: str | Path | None = None,
                  workers: int = 2, progress: bool | None = None) -> ImageCache:
    """Build (or resume, or reuse) the cache of every image listed in the metadata at ``size``."""
    if size < 8:
        raise ValueError(f"cache size must be at least 8 pixels, got {size}")
    data_dir = Path(data_dir)
    meta = read_metadata(find_metadata_file(data_dir))
    read_official_lists(data_dir, meta)  # so `cxrlib data` reports bad split lists, not training
    names = meta["image"].tolist()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, size)
    if (cache_dir / COMPLETE_FILE).is_file():
        cache = ImageCache.open(cache_dir)
        if list(cache.names) == names:
            return cache
        (cache_dir / COMPLETE_FILE).unlink()  # metadata changed: rebuild

    locator = ImageLocator(data_dir)
    locator.check(names)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(cache_dir, f"cannot create the cache folder ({err}); pass another cache_dir") from err
    index = {"names": names, "size": size, "source": str(data_dir.resolve())}
    array_path, done_path = cache_dir / ARRAY_FILE, cache_dir / DONE_FILE
    resumable = ((cache_dir / INDEX_FILE).is_file() and done_path.is_file() and array_path.is_file()
                 and json.loads((cache_dir / INDEX_FILE).read_text()) == index
                 and array_path.stat().st_size == len(names) * size * size)
    if not resumable:
        for path in (array_path, done_path):
            path.unlink(missing_ok=True)
        with open(array_path, "wb") as f:
            f.truncate(len(names) * size * size)
        with open(done_path, "wb") as f:
            f.truncate(len(names))
        (cache_dir / INDEX_FILE).write_text(json.dumps(index))
    done = np.memmap(done_path, dtype=np.uint8, mode="r+", shape=(len(names),))
    todo = [(int(row), str(locator(names[row]))) for row in np.flatnonzero(done == 0)]
    tasks = [(str(array_path), size, todo[i:i + _CHUNK]) for i in range(0, len(todo), _CHUNK)]

    with tqdm(total=len(names), initial=len(names) - len(todo), desc=f"cache {size}px",
              unit="img", disable=None if progress is None else not progress) as bar:
        if workers > 1 and len(tasks) > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for rows in pool.imap_unordered(_decode_rows, tasks):
                    _mark_done(done, rows, bar)
        else:
            for task in tasks:
                _mark_done(done, _decode_rows(task), bar)
    (cache_dir / (COMPLETE_FILE + ".partial")).write_text(json.dumps({"images": len(names), "size": size}))
    os.replace(cache_dir / (COMPLETE_FILE + ".partial"), cache_dir / COMPLETE_FILE)
    return ImageCache.open(cache_dir)


def _mark_done(done: np.memmap, rows: list[int], bar: tqdm) -> None:
    done[rows] = 1
    bar.update(len(rows))
