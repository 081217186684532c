"""`python -m skinlib.generate`: the command line of :mod:`skinlib.augment.generate` (folder-level GLIDE augmentation).

A stable entry point kept at the package top: running it calls ``skinlib.augment.generate.main``.
Importing ``skinlib.generate`` (the module's path before the stage folders) gives
:mod:`skinlib.augment.generate` itself, with a DeprecationWarning: import that instead.
"""
import sys

if __name__ == "__main__":
    from skinlib.augment.generate import main

    sys.exit(main())
else:
    import warnings

    from skinlib.augment import generate as _module

    warnings.warn("skinlib.generate moved to skinlib.augment.generate (package layout by pipeline stage); the "
                  "old import path works until the next release: import skinlib.augment.generate. "
                  "`python -m skinlib.generate` stays.", DeprecationWarning, stacklevel=2)
    sys.modules[__name__] = _module
