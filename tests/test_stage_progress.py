"""What the main job shows while a notebook runs (skinlib.stage_progress, issue 19 item 6)."""
from __future__ import annotations

import io
import logging
import sys

import nbformat
import pytest

from skinlib.stage_progress import (StageProgress, cell_label, executed_cells, is_kernel_noise, last_line,
                                    relay_kernel_stderr)

TCP_WARNING = ("[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication "
               "(including code and outputs) is sent in plain text and is susceptible to eavesdropping.")


def test_only_the_meaningless_kernel_notice_is_noise():
    assert is_kernel_noise(TCP_WARNING)
    for real in ("Traceback (most recent call last):", "[IPKernelApp] ERROR | Exception in message handler",
                 "RuntimeError: CUDA out of memory", "WARNING: something the user must know", ""):
        assert not is_kernel_noise(real)


def test_relay_drops_the_notice_and_keeps_every_other_line():
    stream = io.BytesIO(f"{TCP_WARNING}\nKernel died: segmentation fault\n\xe9t\xe9 broken\n".encode())
    lines: list[str] = []
    relay_kernel_stderr(stream, lines.append)
    assert lines == ["Kernel died: segmentation fault", "\xe9t\xe9 broken"]


def test_cell_label_is_the_first_comment_else_the_first_code_line():
    assert cell_label("# NBVAL_CHECK_OUTPUT\n# Train the DCGAN\nresult = train()") == "Train the DCGAN"
    assert cell_label("\nresult = train(model)\n# later") == "later"
    assert cell_label("x = 1\ny = 2") == "x = 1"
    assert cell_label("# " + "a" * 100, width=10) == "a" * 9 + "…"
    assert cell_label("") == ""


def test_last_line_of_printed_output_and_of_a_tqdm_line():
    assert last_line("first\nsecond\n\n") == "second"
    assert last_line("GLIDE variants:  10%|#  | 1/10\rGLIDE variants:  20%|## | 2/10") == "GLIDE variants:  20%|## | 2/10"
    assert last_line("  \n") == ""
    assert last_line("<Figure size 1200x600 with 8 Axes>") == ""


def log_output_message(logger: logging.Logger, text: str, level=logging.INFO) -> None:
    """Stands in for papermill's PapermillNotebookClient.log_output_message (the handler keys on the name)."""
    logger.log(level, text)


def test_stage_progress_shows_the_running_cell_and_its_last_line_and_echoes_papermill_warnings():
    logger = logging.getLogger("test-stage-progress")
    logger.propagate, logger.level = False, logging.INFO
    shown, echoed = [], []
    handler = StageProgress("04 GLIDE", ["# parameters\nx = 1", "# Generate the variants\nrun()"],
                            set_postfix=shown.append, echo=echoed.append)
    logger.addHandler(handler)
    try:
        logger.info("Executing Cell 2" + "-" * 24)
        log_output_message(logger, "Plan: 55 variants\nExpected about 9m00s for 55 variants on cpu\n")
        log_output_message(logger, "a warning printed by the notebook", logging.WARNING)
        logger.info("Executing notebook with kernel: python3")          # papermill INFO: not shown
        logger.warning("Passed unknown parameter: foo")                  # papermill's own warning
    finally:
        logger.removeHandler(handler)
    assert shown == ["04 GLIDE | cell 2/2: Generate the variants",
                     "04 GLIDE | cell 2/2: Generate the variants | Expected about 9m00s for 55 variants on cpu",
                     "04 GLIDE | cell 2/2: Generate the variants | a warning printed by the notebook"]
    assert echoed == ["papermill: Passed unknown parameter: foo"]


def _notebook(path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x: int = 1  # a number")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("# Say the answer\nprint('answer', x)")]
    nbformat.write(nb, path)


def test_a_real_stage_shows_its_cells_and_prints_no_kernel_notice(tmp_path, capfd):
    """papermill with the main job's handler and kernel manager: postfixes follow the cells (the
    injected parameters cell counted), and the kernel's TCP notice never reaches the terminal."""
    from skinlib.__main__ import _execute

    _notebook(tmp_path / "in.ipynb")
    assert len(executed_cells(str(tmp_path / "in.ipynb"), {"x": 42})) == 3   # + injected parameters

    class Bar:
        shown: list = []

        def set_postfix_str(self, text, refresh=True):
            self.shown.append(text)

    bar = Bar()
    _execute(bar, "99 test", tmp_path / "in.ipynb", tmp_path / "out.ipynb", {"x": 42}, tmp_path, "python3")
    assert "99 test | cell 3/3: Say the answer | answer 42" in bar.shown
    assert bar.shown[-1] == "99 test"
    out, err = capfd.readouterr()
    assert "TCP without encryption" not in out + err
    assert logging.getLogger("papermill").propagate          # restored
