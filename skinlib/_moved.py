"""Old import paths of the modules that moved into the stage folders (kept for one release).

Before the stage folders, ``skinlib`` was flat (``skinlib.crops``, ``skinlib.train``,
``skinlib.metrics``, ...). Importing an old path still works and gives the very module object
of the new path (so ``monkeypatch`` and ``isinstance`` behave), with a DeprecationWarning that
names the new path. ``skinlib.data`` is not here: it is now a package that re-exports the old
module's names. ``python -m skinlib.generate`` / ``python -m skinlib.evaluate`` are real modules
(stable command lines), not aliases.

Installed by ``skinlib/__init__.py``; imports nothing of ours (bottom layer). Production code
never imports an old path (tests/test_layout.py checks it).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module -> new module; a submodule of an old package maps to the same submodule of the new one
MOVED = {
    "skinlib.demo": "skinlib.data.demo",
    "skinlib.crops": "skinlib.data.crops",
    "skinlib.split": "skinlib.data.split",
    "skinlib.models": "skinlib.baselines.models",
    "skinlib.train": "skinlib.baselines.train",
    "skinlib.export": "skinlib.baselines.export",
    "skinlib.viz_train": "skinlib.baselines.figures",
    "skinlib.inpaint": "skinlib.augment.inpaint",
    "skinlib.metrics": "skinlib.evaluation.metrics",
    "skinlib.memorisation": "skinlib.evaluation.memorisation",
    "skinlib.downstream": "skinlib.evaluation.downstream",
    "skinlib.intervals": "skinlib.evaluation.intervals",
    "skinlib.provenance": "skinlib.evaluation.provenance",
}


def new_name(old: str) -> str | None:
    """The new dotted path of a moved module (or of a submodule of a moved package), else None."""
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before):]
    return None


def warn_moved(old: str, new: str, note: str = "", stacklevel: int = 2) -> None:
    """The DeprecationWarning of an old import path (``stacklevel`` as for warnings.warn, counted
    from the caller of this function)."""
    warnings.warn(f"{old} moved to {new} (package layout by pipeline stage); the old path works until "
                  f"the next release: import {new}.{' ' + note if note else ''}",
                  DeprecationWarning, stacklevel=stacklevel + 1)


def alias_module(old: str, new: str, note: str = "") -> None:
    """For a module kept at its old path as an entry point (``python -m skinlib.generate``):
    importing it warns and makes ``sys.modules[old]`` the new module itself."""
    warn_moved(old, new, note, stacklevel=3)  # caller's caller: the module importing the old path
    sys.modules[old] = importlib.import_module(new)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers only for old paths; the module it returns is the new one, already imported."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=new)

    def create_module(self, spec):
        new = spec.origin
        warn_moved(spec.name, new, stacklevel=2)  # warnings skips importlib's frames
        module = importlib.import_module(new)
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system stamped the alias spec on the shared module: give it its own back
        module.__spec__ = self._specs[module.__name__]


FINDER = _MovedModuleFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, FINDER)
