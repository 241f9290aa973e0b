"""How the torch stages (pretraining, adapter training, the influence index's gradients) run
on screen: with Hub access and transformers' own progress bars off, and our rich progress
bars per stage on stderr, or nothing. Neither imports torch; transformers and rich are
imported when used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from factory.training import StepCallback

__all__ = ["ProgressBars", "quiet_offline_hf"]


@contextlib.contextmanager
def quiet_offline_hf() -> Iterator[None]:
    """No Hub access and no transformers progress bars while building; restored after."""
    from transformers.utils import logging as hf_logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if bars:
            hf_logging.enable_progress_bar()


class ProgressBars:
    """rich progress bars per stage, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            # On stderr: stdout carries the commands' results (paths, JSON).
            self._bar = Progress(
                TextColumn("[bold]{task.description:<20}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> ProgressBars:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def stage(self, description: str, total: int) -> StepCallback:
        """A new bar; the returned callback advances it to (done, loss)."""
        if self._bar is None:
            return lambda done, loss: None
        bar = self._bar
        task = bar.add_task(description, total=total, note="")

        def update(done: int, loss: float) -> None:
            note = f"loss {loss:.3f}" if loss == loss and loss >= 0 else ""
            bar.update(task, completed=done, note=note)

        return update
