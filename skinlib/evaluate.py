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
    import warnings

    from skinlib.evaluation import evaluate as _module

    warnings.warn("skinlib.evaluate moved to skinlib.evaluation.evaluate (package layout by pipeline stage); the "
                  "old import path works until the next release: import skinlib.evaluation.evaluate. "
                  "`python -m skinlib.evaluate` stays.", DeprecationWarning, stacklevel=2)
    sys.modules[__name__] = _module
