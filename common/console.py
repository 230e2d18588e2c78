"""What a long job (the experiment, the study) shows on the console while its stages run.

Each stage is a ``monai.bundle run`` subprocess whose whole output goes to the stage's log file. The console gets, by
default: one line when a stage starts and one when it ends (clock time, the stage's time, the elapsed time and the ETA
of the whole job, the stage's key figure read from its output), a progress bar of the running stage on a terminal,
each distinct warning once, and, when a stage fails, the last lines of its output. ``verbose`` echoes every line of
every stage instead (what the log files hold).

The key figures and the progress are read from the lines the bundles log (MONAI's ``Epoch: e/E, Iter: i/I``, the
``Key metric: ... best value`` of the validation, the thresholds' ``xi[term] = ...``, AMAT's ``margins mean ...``, the
robustness report's table, the robustness handler's ``batch b/B``): a line that matches nothing only goes to the log.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from typing import Sequence, TextIO

__all__ = ["Console", "fmt_time"]

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ")
_WARNING = re.compile(r"(^\d{4}-\d\d-\d\d [\d:,]+ - (?:[\w.]+ - )?WARNING - )|(\b\w*Warning: )")
_EPOCH_ITER = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
_PROGRESS = re.compile(r": epoch (\d+)/(\d+), iteration (\d+)/(\d+)")
_BATCH = re.compile(r"robustness: batch (\d+)/(\d+)")
_KEY_METRIC = re.compile(r"Key metric: (\S+) best value: ([-\d.eE+naif]+) at epoch: (\d+)")
_XI = re.compile(r"xi\[(\w+)\] = ([-\d.eE+]+)")
_MARGINS = re.compile(r"margins mean ([-\d.eE+]+)")
_EXCEPTION = re.compile(r"^(?:ERROR \(cause\): )?[\w.]*(?:Error|Exception|Interrupt|Exit)\b[^ ]*:")


def fmt_time(seconds: float) -> str:
    """``"42s"``, ``"3m07s"``, ``"1h02m05s"``; ``"?"`` for an unknown (NaN) duration."""
    if seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Console:
    """The console of a job of stages: start and end lines with the job's ETA, a progress bar, warnings once.

    Args:
        kinds: the kind of every stage to run, in order ("train", "thresholds", "robustness", "report", ...): the ETA
            of the remaining stages is the mean time of the finished stages of their kind (of all finished stages
            when none of that kind has finished yet).
        verbose: echo every line of the stages (otherwise they go to the log files only).
        out: where to print (default sys.stdout).
        bar: draw a progress bar that rewrites its line; default: when ``out`` is a terminal.
        tail: how many last lines of a stage's output to show when it fails.
        width: warning lines longer than this are cut (the log has them whole).
    """

    def __init__(self, kinds: Sequence[str], verbose: bool = False, out: TextIO | None = None,
                 bar: bool | None = None, tail: int = 15, width: int = 160):
        self.kinds = list(kinds)
        self.verbose = verbose
        self.width = width
        self.out = out if out is not None else sys.stdout
        isatty = getattr(self.out, "isatty", None)
        self.bar = (bool(isatty()) if callable(isatty) else False) if bar is None else bar
        self.durations: dict[str, list[float]] = {}
        self.warned: set[str] = set()
        self.done = 0
        self.t0 = time.time()
        self._tail: deque[str] = deque(maxlen=tail)
        self._exceptions: deque[str] = deque(maxlen=5)
        self._stage_start = self.t0
        self._bar_shown = False
        self._last_bar = 0.0
        self._warning: list[str] | None = None
        self._table_header: list[str] | None = None
        self.figures: dict[str, str] = {}
        self.fraction = 0.0
        self.running = False

    # ------------------------------------------------------------------------------------------------ the stage
    def start(self, label: str, name: str, note: str) -> None:
        """A stage starts: ``[3/10] vat_eps2 ... (run: ...; log ...) started 14:02:11, job ETA 9m05s``."""
        self._clear_bar()
        self._stage_start = time.time()
        self._tail.clear()
        self._exceptions.clear()
        self._table_header = None
        self.figures = {}
        self.fraction = 0.0
        eta = self.eta()
        self.running = True
        self._print(f"{label} {name} ... ({note}) started {time.strftime('%H:%M:%S')}"
                    + (f", job ETA {fmt_time(eta)}" if eta == eta else ""))

    def line(self, text: str) -> None:
        """One line of the running stage's output (with or without its newline)."""
        text = text.rstrip("\n")
        self._tail.append(text)
        if _EXCEPTION.match(text):
            self._exceptions.append(text)
        if self.verbose:
            self._print(text)
        else:
            self._warnings(text)
        self._read(text)
        if self.bar and not self.verbose and time.time() - self._last_bar >= 0.5:
            self._draw_bar()

    def end(self, label: str, name: str, kind: str, seconds: float) -> None:
        """A stage finished: ``[3/10] vat_eps2 done in 2m10s: best val_mean_dice 0.61 (total 9m, ETA 12m)``."""
        self._flush_warning()
        self._clear_bar()
        self.durations.setdefault(kind, []).append(seconds)
        self.done += 1
        self.running = False
        figure = self.key_figure()
        eta = self.eta()
        times = f"total {fmt_time(time.time() - self.t0)}" + (f", job ETA {fmt_time(eta)}" if self.remaining() else "")
        self._print(f"{label} {name} done in {fmt_time(seconds)}" + (f": {figure}" if figure else "") + f" ({times})")

    def failed(self) -> None:
        """The running stage failed: the exceptions of its traceback (the root cause first) and its last lines,
        unless every line was shown already."""
        self._flush_warning()
        self._clear_bar()
        if self.verbose:
            return
        causes = [t for t in dict.fromkeys(self._exceptions) if t not in self._tail]
        if causes:
            self._print("  exceptions in its output:\n" + "\n".join(f"    {t}" for t in causes))
        if self._tail:
            self._print("  last lines of its output:\n" + "\n".join(f"    {t}" for t in self._tail))

    def skip(self, text: str, planned: bool = False) -> None:
        """A stage that does not run: one line. ``planned``: it was one of ``kinds`` (the next one) but was made
        meanwhile by another process; it leaves the ETA."""
        if planned and self.done < len(self.kinds):
            del self.kinds[self.done]
        self._print(text)

    # -------------------------------------------------------------------------------------------------- figures
    def remaining(self) -> list[str]:
        """The kinds of the stages not finished yet (the running one first)."""
        return self.kinds[self.done:]

    def eta(self) -> float:
        """Seconds the job still needs: the stages not finished, each at the mean time of the finished stages of its
        kind, less what the running stage has done (its progress, else its time so far); NaN before any stage
        finished."""
        every = [d for ds in self.durations.values() for d in ds]
        if not every:
            return float("nan")

        def mean(kind: str) -> float:
            ds = self.durations.get(kind) or every
            return sum(ds) / len(ds)

        todo = self.remaining()
        total = sum(mean(k) for k in todo)
        if self.running and todo:
            current = mean(todo[0])
            spent = time.time() - self._stage_start
            total -= current - (current * (1 - self.fraction) if self.fraction else max(current - spent, 0.0))
        return total

    def key_figure(self) -> str:
        """The figure a stage is judged by, from its output: the robustness table's clean and PGD average, else
        the best validation metric, the thresholds, AMAT's mean margin."""
        f = self.figures
        keys = ("robustness",) if "robustness" in f else ("key_metric", "xi", "margins")
        parts = [f[k] for k in keys if k in f]
        return ", ".join(parts)

    def _read(self, text: str) -> None:
        m = _EPOCH_ITER.search(text) or _PROGRESS.search(text)
        if m:
            e, ne, i, ni = (int(g) for g in m.groups())
            if ne and ni:
                self.fraction = min(1.0, ((e - 1) * ni + i) / (ne * ni))
        elif m := _BATCH.search(text):
            b, nb = int(m.group(1)), int(m.group(2))
            self.fraction = min(1.0, b / nb) if nb else self.fraction
        if m := _KEY_METRIC.search(text):
            self.figures["key_metric"] = f"best {m.group(1)} {float(m.group(2)):.3f} (epoch {m.group(3)})"
        xi = _XI.findall(text)
        if xi:
            old = self.figures.get("xi", "xi")
            self.figures["xi"] = old + "".join(f" {t} {float(v):.3g}" for t, v in xi)
        if m := _MARGINS.search(text):
            self.figures["margins"] = f"margin mean {float(m.group(1)):.3g}"
        self._table(text)

    def _table(self, text: str) -> None:
        """The robustness report's markdown table: ``| metric | clean | PGD 2 | ... | PGD avg | ...``."""
        if not text.startswith("|"):
            return
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if cells and cells[0] == "metric":
            self._table_header = cells
        elif self._table_header and cells and not set(cells[0]) <= set("-: ") and len(cells) == len(
                self._table_header):
            row = dict(zip(self._table_header, cells))
            metric = cells[0].split(" (")[0]
            shown = [f"{k} {row[k]}" for k in row if k in ("clean", "PGD avg")]
            if shown and "robustness" not in self.figures:  # the first metric of the table: the task's main one
                self.figures["robustness"] = f"{metric} " + ", ".join(shown)

    # ------------------------------------------------------------------------------------------------- warnings
    def _warnings(self, text: str) -> None:
        """A warning (a logging WARNING record with its continuation lines, or a Python warning) is shown the first
        time its text occurs; numbers and bracketed lists do not make a warning new."""
        if self._warning is not None:
            if _STAMP.match(text) or not text.strip() and self._warning[-1:] == [""]:
                self._flush_warning()
            else:
                self._warning.append(text)
                return
        m = _WARNING.search(text)
        if not m:
            return
        if m.group(1):  # a logging record: its message may go on over the next lines (the synthetic-data banner)
            self._warning = [text[m.end():]]
        else:  # a Python warning: "file:line: UserWarning: message"; the source line after it is dropped
            self._show_warning([text[m.start():]])

    def _flush_warning(self) -> None:
        if self._warning is not None:
            lines, self._warning = self._warning, None
            self._show_warning([t for t in lines if t.strip()])

    def _show_warning(self, lines: list[str]) -> None:
        if not lines:
            return
        key = re.sub(r"\[[^\]]*\]|'[^']*'|\d+(\.\d+)?", "", " ".join(lines))
        if key in self.warned:
            return
        self.warned.add(key)
        self._clear_bar()
        shown = [t if len(t) <= self.width else t[:self.width - 16] + " ... (see log)" for t in lines]
        self._print("  warning: " + "\n  ".join(shown))

    # ------------------------------------------------------------------------------------------------- printing
    def _draw_bar(self) -> None:
        self._last_bar = time.time()
        width = 30
        filled = int(round(self.fraction * width))
        eta = self.eta()
        spent = time.time() - self._stage_start
        text = (f"\r  [{'#' * filled}{'.' * (width - filled)}] {self.fraction:4.0%} {fmt_time(spent)}"
                + (f", job ETA {fmt_time(eta)}" if eta == eta else ""))
        self.out.write(text.ljust(72))
        self.out.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r" + " " * 72 + "\r")
            self._bar_shown = False

    def _print(self, text: str) -> None:
        self._clear_bar()
        self.out.write(text + "\n")
        self.out.flush()
