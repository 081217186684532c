"""skinlib: synthetic skin-disease image generation (maculopapular rash).

The package is laid out by pipeline stage, like the numbered notebooks:

    data/         photos, masks, demo renderer, crop extraction, patient split, CropDataset  (01)
    baselines/    DCGAN, CVAE, their training loop, sample export, training figures      (02, 03)
    glide/        the GLIDE engine: tokenizer, text encoder, U-Net, diffusion, checkpoints,
                  pipeline, fine-tuning
    augment/      iterative mask-and-inpaint, folder-level generation                        (04)
    evaluation/   image metrics, memorisation, downstream protocol, the evaluate command     (05)
    io.py errors.py viz.py   bottom layer every stage may use
    cpu.py                   bottom layer: the CPU's model and whether it has native bf16
    stages.py __main__.py    the main job (`python -m skinlib run`)
    generate.py evaluate.py  the stable command lines `python -m skinlib.generate` / `.evaluate`

Dependencies point one way: io/errors/cpu < data < viz < glide, baselines < augment < evaluation <
stages/__main__ (each folder's ``__init__`` says what it may import; tests/test_layout.py checks).
Old flat import paths (``skinlib.crops``, ``skinlib.train``, ...) work for one release with a
DeprecationWarning (:mod:`skinlib._moved`).

Conventions used across the package: images are float tensors in [-1, 1], NCHW, RGB;
masks are N1HW float/bool tensors with 1 = the thing named in the docstring (ill skin,
or, for GLIDE inpainting, a known pixel to keep). Seeds are explicit arguments.
"""
from . import _moved

_moved.install()

__version__ = "0.3.0"
