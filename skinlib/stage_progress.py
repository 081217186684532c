"""What the main job shows while a notebook runs (issue 19 item 6).

* :class:`StageProgress`: a logging handler on papermill's logger (``log_output=True``): the main
  job's stage bar gets, as its postfix, the running cell (number and first comment line) and the
  notebook's last printed line. Papermill's own warnings still reach the terminal; the cells'
  output stays in the executed notebook, as before.
* :class:`QuietKernelManager`: the kernel's stderr passes through :func:`relay_kernel_stderr`,
  which drops only the kernel start-up notices of :data:`KERNEL_NOISE` (e.g. "Kernel is running
  over TCP without encryption", printed by ipykernel for every local kernel); every other line,
  a real kernel error included, is printed.
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from typing import IO, Callable, Sequence

from jupyter_client.manager import AsyncKernelManager

# ipykernel's kernelapp.init_sockets warns about this for every kernel on localhost: nothing a user can act on
KERNEL_NOISE = (re.compile(r"Kernel is running over TCP without encryption"),)
CELL_START = re.compile(r"^Executing Cell (\d+)-*$")
REPR = re.compile(r"^<[^<>]*>$")
MAX_POSTFIX = 110


def is_kernel_noise(line: str) -> bool:
    """True for a kernel stderr line of :data:`KERNEL_NOISE` (never for an error)."""
    return any(p.search(line) for p in KERNEL_NOISE)


def relay_kernel_stderr(stream: IO[bytes], write: Callable[[str], None]) -> None:
    """Copy ``stream`` (the kernel's stderr) line by line to ``write``, dropping :data:`KERNEL_NOISE`;
    returns at end of stream (the kernel exited)."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if not is_kernel_noise(line):
            write(line)


class QuietKernelManager(AsyncKernelManager):
    """The default kernel manager, with the kernel's stderr relayed through :func:`relay_kernel_stderr`
    (pass as ``kernel_manager_class`` to ``papermill.execute_notebook``)."""

    async def start_kernel(self, **kw):
        kw.setdefault("stderr", subprocess.PIPE)
        await super().start_kernel(**kw)
        stream = getattr(getattr(self.provisioner, "process", None), "stderr", None)
        if stream is None:     # an unread pipe would block the kernel once full
            await self.shutdown_kernel(now=True)
            raise RuntimeError(f"QuietKernelManager: the kernel's provisioner {type(self.provisioner).__name__} gives "
                               "no local process stderr to relay; it needs jupyter_client>=7 with the local "
                               "provisioner (pip install -U jupyter_client).")
        from tqdm.auto import tqdm

        threading.Thread(target=relay_kernel_stderr, args=(stream, lambda s: tqdm.write(s, file=sys.stderr)),
                         daemon=True, name="kernel-stderr").start()


def _cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def cell_label(source: str, width: int = 60) -> str:
    """A cell's first comment line (NBVAL markers skipped), else its first code line; cut to ``width``."""
    lines = [ln.strip() for ln in source.splitlines() if ln.strip()]
    comments = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#") and "NBVAL_" not in ln]
    text = next((c for c in comments if c), None) or next((ln for ln in lines if not ln.startswith("#")), "")
    return _cut(text, width)


def last_line(text: str, width: int = 60) -> str:
    """The last non-empty line of printed ``text`` (a tqdm line: its last ``\\r`` state), cut to ``width``;
    "" for an object's repr such as "<Figure size 640x480 with 1 Axes>"."""
    lines = [seg.strip() for ln in text.splitlines() for seg in ln.split("\r")[-1:] if seg.strip()]
    lines = [ln for ln in lines if not REPR.match(ln)]
    return _cut(lines[-1] if lines else "", width)


class StageProgress(logging.Handler):
    """Handler for papermill's logger: ``set_postfix(text)`` gets "<stage> | cell i/N: <label> | <last
    output line>"; papermill's own WARNING+ records go to ``echo``. ``cells``: the sources of the
    notebook's cells as papermill runs them (with the injected parameters cell)."""

    def __init__(self, stage: str, cells: Sequence[str], set_postfix: Callable[[str], None],
                 echo: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.stage, self.cells, self.set_postfix, self.echo = stage, list(cells), set_postfix, echo
        self.cell = ""
        self.output = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        started = CELL_START.match(message.strip())
        if started:
            i = int(started.group(1))
            label = cell_label(self.cells[i - 1]) if 0 < i <= len(self.cells) else ""
            self.cell, self.output = f"cell {i}/{len(self.cells)}" + (f": {label}" if label else ""), ""
        elif record.funcName == "log_output_message":     # a cell's printed output
            self.output = last_line(message) or self.output
        else:
            if record.levelno >= logging.WARNING:          # papermill itself
                self.echo(f"papermill: {message}")
            return
        text = " | ".join(t for t in (self.stage, self.cell, self.output) if t)
        self.set_postfix(_cut(text, MAX_POSTFIX))


def executed_cells(notebook_path: str, parameters: dict, kernel_name: str | None = None) -> list[str]:
    """The code and markdown sources of ``notebook_path`` as papermill executes it with ``parameters``
    (its injected-parameters cell included), so that cell numbers match papermill's log."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(notebook_path)
    if parameters:               # as papermill.execute_notebook: no injected cell without parameters
        nb = parameterize_notebook(nb, parameters, kernel_name=kernel_name)
    return [c.source for c in nb.cells]
