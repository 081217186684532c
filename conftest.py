"""Test-session setup shared by the unit tests and nbval.

nbval executes the notebooks with their literal default parameters and cannot pass papermill
parameters; the notebooks honour SKINLIB_SMOKE=1 (see skinlib.stages.smoke_mode), so the
whole test session runs them in smoke mode. Kernels started by nbval/papermill inherit it.
"""
import os

os.environ.setdefault("SKINLIB_SMOKE", "1")
os.environ.setdefault("SKINLIB_HEADLESS", "1")   # no ipywidgets in headless kernels (see skinlib.stages.interactive)
os.environ.setdefault("MPLBACKEND", "Agg")
