"""Evaluation (notebook 05, ``python -m skinlib.evaluate``): image metrics, memorisation,
the downstream classifier protocol, leak checks and the command that runs them all.

Image metrics, one idea a module (the former ``skinlib/metrics.py``): :mod:`.images` (loading
folders as uint8 tensors), :mod:`.features` (Inception / random feature extractors),
:mod:`.distances` (Fréchet and kernel distances), :mod:`.fidelity` (precision/recall,
density/coverage), :mod:`.diversity` (MS-SSIM), :mod:`.edits` (inpainting change inside vs
outside the edit), :mod:`.image_metrics` (the patient-split table with bootstrap intervals),
:mod:`.report` (colours, grids, Markdown tables); :mod:`.metrics` re-exports them all in one
namespace. Then :mod:`.memorisation`, :mod:`.downstream` with :mod:`.intervals`,
:mod:`.provenance` (leak checks), :mod:`.evaluate` (``run_evaluation`` and the command line) and
:mod:`.folds` (pooling the evaluations of cross-validation folds).
May import :mod:`skinlib.io`, :mod:`skinlib.errors`, :mod:`skinlib.data`, :mod:`skinlib.viz`,
:mod:`skinlib.glide`, :mod:`skinlib.baselines` and :mod:`skinlib.augment`; nothing in skinlib
imports it except the entry points (``skinlib.evaluation.evaluate``, ``stages``, ``__main__``).
"""
