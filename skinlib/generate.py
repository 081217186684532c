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
    from skinlib._moved import alias_module

    alias_module(__name__, "skinlib.augment.generate", "`python -m skinlib.generate` stays.")
