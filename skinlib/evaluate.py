"""`python -m skinlib.evaluate`: the command line of :mod:`skinlib.evaluation.evaluate` (the evaluation of generated folders).

A stable entry point kept at the package top: running it calls ``skinlib.evaluation.evaluate.main``.
Importing ``skinlib.evaluate`` (the module's path before the stage folders) gives
:mod:`skinlib.evaluation.evaluate` itself, with a DeprecationWarning: import that instead.
"""
import sys

if __name__ == "__main__":
    from skinlib.evaluation.evaluate import main

    sys.exit(main())
else:
    from skinlib._moved import alias_module

    alias_module(__name__, "skinlib.evaluation.evaluate", "`python -m skinlib.evaluate` stays.")
