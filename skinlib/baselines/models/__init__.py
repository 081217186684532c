"""The two baseline generators (DCGAN, CVAE) and the small interface the training loop uses.

:func:`skinlib.baselines.train.train` knows a model only through these members:

``name``                 str, registry key ("dcgan", "cvae"); stored in checkpoints
``config``               dict of the constructor's keyword arguments (plain types); stored in
                         checkpoints and compared on resume, ``build_model(name, **config)``
                         rebuilds the same architecture
``image_size``           64, 128 or 256
``num_classes``          number of label classes the model is conditioned on (1 = none)
``phase_modules()``      {phase: module}: one optimiser per phase over that module's
                         parameters, the phases run in this order on every batch
``loss(phase, images, labels, cache)``
                         -> (scalar loss to minimise, {name: detached scalar to log});
                         images [N, 3, S, S] in [-1, 1], labels [N] int64, ``cache`` a dict
                         shared by the phases of one step; randomness from the global RNG
``sample_noise(n, generator, device)``
                         latent noise for ``generate`` drawn from a torch.Generator
``generate(noise, labels)``
                         -> images [N, 3, S, S] in [-1, 1]

The models are plain torch modules: this folder may import nothing of skinlib outside itself.
"""
from __future__ import annotations

from torch import nn

from .cvae import CVAE
from .dcgan import DCGAN, STUDY_OPTIONS, STUDY_TRAIN_SETTINGS, check_image_size

MODELS = {"dcgan": DCGAN, "cvae": CVAE}


def build_model(name: str, **config) -> nn.Module:
    """Construct the registered model ``name`` ("dcgan" or "cvae") from its config dict."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}: use one of {sorted(MODELS)}.")
    return MODELS[name](**config)


__all__ = ["CVAE", "DCGAN", "MODELS", "STUDY_OPTIONS", "STUDY_TRAIN_SETTINGS", "build_model",
           "check_image_size"]
