"""Fixtures shared by every test module."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test models are tiny: one intra-op thread is faster than several, and much faster on a
    busy shared CPU (OpenMP threads spin against each other). Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """List the screenshots the browser tests took (``record_property("screenshot", path)``), so
    that the CI log names them even under ``-q``."""
    shots = [value for reports in terminalreporter.stats.values() for rep in reports
             if getattr(rep, "when", None) == "call"
             for name, value in getattr(rep, "user_properties", ()) if name == "screenshot"]
    if shots:
        terminalreporter.section("browser test screenshots")
        for path in shots:
            terminalreporter.write_line(path)
