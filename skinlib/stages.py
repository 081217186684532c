"""The numbered notebooks as stages of the main job, and helpers the notebooks share.

A stage is one notebook in ``notebooks/``; :mod:`skinlib.__main__` executes them in order
with papermill. Notebooks call :func:`smoke_mode` right after their parameters cell and
:func:`ensure_demo_crops` when they need crops and were given none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .io import env_flag

SMOKE_ENV = "SKINLIB_SMOKE"
HEADLESS_ENV = "SKINLIB_HEADLESS"


@dataclass(frozen=True)
class Stage:
    key: str                  # "01" ... "05", used by ``--only`` and in the params YAML
    notebook: str             # file name in notebooks/
    title: str
    needs: tuple[str, ...] = ()   # stages whose output this one reads


STAGES: tuple[Stage, ...] = (
    Stage("01", "01_data_cropping.ipynb", "Data cropping"),
    Stage("02", "02_dcgan_training.ipynb", "DCGAN training", needs=("01",)),
    Stage("03", "03_cvae_training.ipynb", "CVAE training", needs=("01",)),
    Stage("04", "04_glide_inpainting.ipynb", "GLIDE iterative inpainting", needs=("01",)),
    Stage("05", "05_evaluation.ipynb", "Evaluation", needs=("01",)),
)


def smoke_mode(smoke: bool = False) -> bool:
    """True when the notebook parameter ``smoke`` is set or the environment has SKINLIB_SMOKE=1.

    nbval cannot pass papermill parameters, so the test suite sets the environment variable.
    """
    if smoke:
        print("SMOKE mode: tiny settings, results are for checking the pipeline only.")
        return True
    if env_flag(SMOKE_ENV):
        print(f"SMOKE mode ({SMOKE_ENV}=1): tiny settings, results are for checking the pipeline only.")
        return True
    return False


def interactive() -> bool:
    """False in headless runs (the environment has SKINLIB_HEADLESS=1: the main job and the test
    suite set it for their kernels): notebooks then skip their ipywidgets browsers, because a
    widget cell can leave papermill/nbclient waiting forever for a reply the kernel already sent
    (jupyter/nbclient#312). Set it yourself for `papermill` runs by hand."""
    return not env_flag(HEADLESS_ENV)


def ensure_demo_crops(out_dir, smoke: bool = False) -> Path:
    """Return ``out_dir/crops``, first generating the SYNTHETIC demo dataset and cropping it
    (notebook 01's defaults) when that folder holds no finished crops. Finished crops of the
    user's own data are returned untouched (see :func:`skinlib.data.crops.make_demo_crops`)."""
    from .data.crops import make_demo_crops

    return Path(make_demo_crops(out_dir, smoke=smoke))


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (present in a clone / editable install)."""
    path = Path(__file__).resolve().parents[1] / "notebooks"
    if not path.is_dir():
        raise FileNotFoundError(
            f"Notebook folder {path} not found: `python -m skinlib run` needs a clone of the "
            "repository (git clone ... && pip install -r requirements.txt), or pass --notebooks DIR.")
    return path
