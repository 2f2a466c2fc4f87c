"""The answers ``fedshop-site serve`` answers from, swapped when a new model is installed.

:class:`LiveAnswers` holds the current :class:`clients.scoring.SiteAnswers` and a watcher
thread that looks, every ``interval`` seconds, at the two things they are made of: the
run in use (``models/current``, rewritten by every install) and the prepared orders
(rewritten by ``prepare``). When either changed it builds the new answers beside the old
ones and then swaps one reference. A request reads that reference once, so requests in
flight finish on the answers they started with and no request fails during a swap. A new
model that cannot be loaded is reported once and the old one stays in service.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clients.model_store import ModelStoreError, current_file
from clients.scoring import SiteAnswers, load_answers
from clients.site_data import SiteDataError
from models.schema import ORDERS_FILE

SourceVersion = tuple[tuple[int, int, int] | None, ...]


class LiveAnswers:
    """The site's current answers, kept up to date by :meth:`start`'s watcher thread.

    Raises:
        ModelStoreError, SiteDataError: at construction, when there is nothing to serve.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        interval: float = 1.0,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.interval = interval
        self._report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self._version = self._source_version()
        self.current: SiteAnswers = load_answers(self.data_dir)
        self._refused: SourceVersion | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)

    def start(self) -> None:
        """Start watching for a new model or new orders."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the current answers stay)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10 * self.interval)

    def _source_version(self) -> SourceVersion:
        """Identity of the run pointer and the orders file (an atomic rewrite makes a new
        inode, so two rewrites within a clock tick still differ)."""

        def stamp(path: Path) -> tuple[int, int, int] | None:
            try:
                info = path.stat()
            except FileNotFoundError:
                return None
            return info.st_ino, info.st_mtime_ns, info.st_size

        return stamp(current_file(self.data_dir)), stamp(self.data_dir / ORDERS_FILE)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            version = self._source_version()
            if version in (self._version, self._refused):
                continue
            started = time.monotonic()
            try:
                answers = load_answers(self.data_dir)
            except (ModelStoreError, SiteDataError, OSError) as error:
                self._refused = version
                self._report(f"kept model run {self.current.installed.run!r}: {error}")
                continue
            self.current, self._version = answers, version
            self._report(
                f"now serving model run {answers.installed.run!r} ({answers.customers:,}"
                f" customers, loaded in {time.monotonic() - started:.1f} s)"
            )
