"""The bad-file policy: ``skip`` counts each unreadable image once and lists it; ``strict`` refuses
to start while any image is unreadable."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgtune.data.decode import BadImage, decode_rgb, source_name
from imgtune.data.samples import ImageDataset, Skipped
from imgtune.data.workers import decode_threads
from imgtune.errors import UserError


class BadFiles:
    """Files skipped under the ``skip`` policy, each counted once however often it is met."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def add(self, skipped: Sequence[Skipped]) -> None:
        for s in skipped:
            self.reasons.setdefault(s.name, s.reason)

    def __len__(self) -> int:
        return len(self.reasons)

    def summary(self, shown: int = 5) -> str:
        names = list(self.reasons)
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return f"skipped {len(names)} unreadable image(s): {', '.join(names[:shown])}{more}"

    def write(self, path: Path) -> None:
        path.write_text("".join(f"{name}\t{reason}\n" for name, reason in sorted(self.reasons.items())))


def find_bad_files(rows, min_side: int | None = None, workers: int | None = None) -> list[Skipped]:
    """Decode every image once (threads: PIL releases the GIL while decoding)."""

    def check(row):
        source = row["image"] if isinstance(row, dict) else row
        try:
            decode_rgb(source, min_side)
            return None
        except BadImage as err:
            return Skipped(source_name(source), str(err))

    with ThreadPoolExecutor(max_workers=workers or decode_threads()) as pool:
        return [s for s in pool.map(check, rows, chunksize=64) if s is not None]


def find_unreadable(source, min_side: int | None = None) -> list[Skipped]:
    """The unreadable images of rows or of a dataset. A cached dataset already knows its own (found
    while the cache was built and kept with it), so a ``strict`` run on a cache decodes nothing again."""
    cache = getattr(source, "cache", None)
    if cache is not None:
        return [cache.bad[i] for i in sorted(cache.bad)]
    if isinstance(source, ImageDataset):
        return find_bad_files(source.rows, source.min_side)
    return find_bad_files(source, min_side)


def check_strict(named: dict, min_side: int | None = None) -> None:
    """The ``strict`` policy: refuse to start if any image anywhere (rows or datasets) is unreadable."""
    bad = [s for source in named.values() if source is not None for s in find_unreadable(source, min_side)]
    if bad:
        listing = "; ".join(f"{s.name} ({s.reason})" for s in bad)
        raise UserError(
            f"{len(bad)} unreadable image(s), refusing to start "
            f"(--strict; drop it to skip and list them instead): {listing}"
        )
