"""The baseline generators (notebooks 02 and 03): DCGAN and CVAE, their one resumable training
loop, sample export in the crop format, and the figures of a training run.

Modules: :mod:`.models` (``DCGAN``, ``CVAE``, ``build_model``: the interface the loop uses),
:mod:`.train` (the loop, checkpoints, ``load_model``), :mod:`.export` (generated images ->
a crops-format folder; uses train, never the other way), :mod:`.figures` (image grids, epoch
grids and their browser). May import :mod:`skinlib.io`, :mod:`skinlib.errors`,
:mod:`skinlib.eta`, :mod:`skinlib.training`, :mod:`skinlib.data` and :mod:`skinlib.viz`; never glide,
augment or evaluation.
"""
