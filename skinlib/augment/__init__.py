"""GLIDE augmentation (notebook 04): the iterative mask-and-inpaint algorithm and the
folder-level generation job built on the GLIDE engine.

Modules: :mod:`.inpaint` (``IterativeInpainting``, mask samplers, edited-area bookkeeping,
seeds), :mod:`.generate` (``generate_variants``: batched, seeded, resumable, sharded; its
figures; the command line behind ``python -m skinlib.generate``), :mod:`.plan` (augmentation
plans per (disease, Fitzpatrick group) cell; ``python -m skinlib.plan``), :mod:`.cost`
(measured seconds per variant, budgets, expected time and cost), :mod:`.prompts` (prompt
templates per skin group). May import
:mod:`skinlib.io`, :mod:`skinlib.errors`, :mod:`skinlib.cpu`, :mod:`skinlib.eta`, :mod:`skinlib.data`,
:mod:`skinlib.viz` and :mod:`skinlib.glide`; never baselines or evaluation.
"""
