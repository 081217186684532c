"""The data layer (notebook 01): photos and masks, the SYNTHETIC demo renderer, crop
extraction, the patient split and the crop folder format with its torch Dataset.

Modules: :mod:`.photos` (finding photo/mask pairs, safe image loading, PNG encoding),
:mod:`.demo` (procedural demo dataset), :mod:`.crops` (the study's crop extraction, folder
level), :mod:`.split` (patient-level train/test split), :mod:`.dataset` (the crop folder
format: rows, ``load_crop``, ``CropDataset``, content hashes). May import :mod:`skinlib.io` and
:mod:`skinlib.errors` only; never viz, glide, baselines, augment or evaluation. Every stage
folder may import it.

This package re-exports the names of the former module ``skinlib/data.py`` (photos + dataset),
so ``from skinlib.data import load_crop`` keeps working; code inside skinlib imports from the
submodules.
"""
from .dataset import (MANIFEST, SPLITS, CropDataset, crops_are_synthetic, crops_content_sha256,
                      list_crop_rows, load_crop)
from .photos import (IMAGE_SUFFIXES, LAYOUT, MASK_SUFFIX, MASK_THRESHOLD, MAX_PIXELS, BadInputError,
                     PhotoPair, Skip, encode_png, find_pairs, load_mask, load_pair, load_photo,
                     natural_key, open_image)

__all__ = [
    "MANIFEST", "IMAGE_SUFFIXES", "MASK_SUFFIX", "MASK_THRESHOLD", "MAX_PIXELS", "LAYOUT",
    "BadInputError", "PhotoPair", "Skip", "natural_key", "find_pairs", "open_image", "load_photo",
    "load_mask", "load_pair", "encode_png", "SPLITS", "list_crop_rows", "load_crop", "CropDataset",
    "crops_are_synthetic", "crops_content_sha256",
]
