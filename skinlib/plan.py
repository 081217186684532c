"""`python -m skinlib.plan`: the command line of :mod:`skinlib.augment.plan` (augmentation plans)."""
import sys

if __name__ == "__main__":
    from skinlib.augment.plan import main

    sys.exit(main())
