"""Progress bars for the `requant` command: a one-line stage bar on stderr, and the hook
that advances it while `requant.compile` runs.

What this module owns:
- `StageProgress`: `[#####-----] 3/7 quantize  2.1s` redrawn in place on one line; shown
  only when enabled (not `-q`) and the stream is a terminal, so pipes, CI logs and
  tests never see it. Finished, it clears its line so the next output starts clean.
- `follow_compile(progress, stages)`: while a `requant.compile` runs, advances the bar
  as each stage finishes. `requant.compile` takes no progress callback, so this
  listens to the log records the pipeline already writes (the ONNX frontend's "read",
  the pass manager's "pass NAME", calibration's "calibration:", the compiler's
  "compiled for"); a record it does not
  recognise is ignored, so a changed message only stops the bar from moving.
- `quiet_library_bars()`: turns off tqdm bars that libraries draw themselves (the
  calibration step's, transformers' weight loading) for `-q`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

__all__ = [
    "StageProgress",
    "BarAwareHandler",
    "follow_compile",
    "quiet_library_bars",
    "compile_stages",
    "READ_STAGE",
    "BUILD_STAGE",
]

_ACTIVE: list[StageProgress] = []  # bars on screen now (innermost last)

READ_STAGE = "reading model"
BUILD_STAGE = "building runtime"
_BAR_WIDTH = 24


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class StageProgress:
    """A progress bar over named stages, drawn on `stream` (stderr by default) only
    when `enabled` and the stream is a terminal."""

    def __init__(self, title: str, stages: Sequence[str], *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.title = title
        self.stages = list(stages)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _is_tty(self.stream)
        self.index = 0
        self.started = time.monotonic()
        self._drawn = 0

    @property
    def current(self) -> str | None:
        """The stage now running (None when all are done)."""
        return self.stages[self.index] if self.index < len(self.stages) else None

    def start(self) -> StageProgress:
        if self.enabled:
            _ACTIVE.append(self)
        self._draw()
        return self

    def finish(self, stage: str, *, skip_ahead: bool = False) -> None:
        """Mark `stage` done when it is the current one. With `skip_ahead`, a later
        stage also counts (and every stage before it is done); without, other names
        are ignored, e.g. the passes a pass runs inside itself (canonicalize runs its
        own cse and dce, which must not tick off the pipeline's later cse and dce)."""
        if stage == self.current:
            position = self.index
        elif skip_ahead and stage in self.stages[self.index:]:
            position = self.stages.index(stage, self.index)
        else:
            return
        self.index = position + 1
        self._draw()

    def advance(self) -> None:
        """Mark the current stage done."""
        if self.index < len(self.stages):
            self.index += 1
        self._draw()

    def close(self) -> None:
        """Clear the bar's line; it is no longer redrawn."""
        self.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def clear(self) -> None:
        """Blank the bar's line (e.g. for a log message); the next update redraws it."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def render(self) -> str:
        """The bar's text (without the carriage return)."""
        total = max(len(self.stages), 1)
        done = min(self.index, total)
        filled = round(_BAR_WIDTH * done / total)
        label = self.current or "done"
        seconds = time.monotonic() - self.started
        return f"{self.title} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done}/{total} {label}  {seconds:.1f}s"

    def _draw(self) -> None:
        if not self.enabled:
            return
        columns = shutil.get_terminal_size((100, 20)).columns
        text = self.render()[: max(columns - 1, 10)]
        pad = max(self._drawn - len(text), 0)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn = len(text)

    def __enter__(self) -> StageProgress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BarAwareHandler(logging.StreamHandler):
    """A stderr log handler that moves an active progress bar out of the way: the
    bar's line is cleared, the message written, the bar drawn again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        bars = [b for b in _ACTIVE if b.stream is self.stream]
        for bar in bars:
            bar.clear()
        super().emit(record)
        for bar in bars:
            bar._draw()


def compile_stages(step_names: Sequence[str]) -> list[str]:
    """The stages of a `requant.compile` run: read, each pipeline step, build."""
    return [READ_STAGE, *step_names, BUILD_STAGE]


class _CompileLogWatcher(logging.Filter):
    """A logger filter that maps the pipeline's log records to finished stages, then
    lets through only what the logger would have passed before its level was lowered
    (so nothing extra reaches any handler)."""

    def __init__(self, progress: StageProgress, threshold: int) -> None:
        super().__init__()
        self.progress = progress
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            stage = _finished_stage(record)
        except Exception:  # a progress bar must never break compilation
            stage = None
        if stage is not None:
            # the read and build stages are unambiguous: reaching them skips any
            # stage whose record was missed
            self.progress.finish(stage, skip_ahead=stage in (READ_STAGE, BUILD_STAGE))
        return record.levelno >= self.threshold


def _finished_stage(record: logging.LogRecord) -> str | None:
    msg = record.msg if isinstance(record.msg, str) else ""
    if record.name == "requant.frontends.onnx_frontend" and msg.startswith("read "):
        return READ_STAGE
    if record.name == "requant.passes.manager" and msg.startswith("pass ") and record.args:
        return str(record.args[0])
    if record.name == "requant.passes.calibration" and msg.startswith("calibration:"):
        return "calibrate"
    if record.name == "requant.compiler" and msg.startswith("compiled for"):
        return BUILD_STAGE
    return None


_WATCHED = {
    "requant.frontends.onnx_frontend": logging.DEBUG,
    "requant.passes.manager": logging.DEBUG,
    "requant.passes.calibration": logging.INFO,
    "requant.compiler": logging.INFO,
}


@contextlib.contextmanager
def follow_compile(progress: StageProgress) -> Iterator[StageProgress]:
    """Advance `progress` from the pipeline's log records while the block runs (log
    levels are restored after; nothing is touched when the bar is not shown)."""
    if not progress.enabled:
        yield progress
        return
    installed: list[tuple[logging.Logger, _CompileLogWatcher, int]] = []
    for name, level in _WATCHED.items():
        log = logging.getLogger(name)
        watcher = _CompileLogWatcher(progress, log.getEffectiveLevel())
        installed.append((log, watcher, log.level))
        log.addFilter(watcher)
        log.setLevel(min(level, log.getEffectiveLevel()))
    progress.start()
    try:
        yield progress
    finally:
        for log, watcher, level in installed:
            log.removeFilter(watcher)
            log.setLevel(level)
        progress.close()


def quiet_library_bars() -> None:
    """Silence tqdm bars drawn by libraries (calibration, transformers, ORT's tools)."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
