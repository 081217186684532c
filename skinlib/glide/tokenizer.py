"""GLIDE's tokenizer: GPT-2 byte-level BPE via tiktoken, lower-cased, right-padded (spec section 4).

tiktoken's built-in ``gpt2`` encoding downloads its two vocabulary files at run time, so we
build the same ``tiktoken.Encoding`` from the copies shipped inside this package
(``skinlib/glide/vocab/encoder.json.gz`` and ``vocab.bpe.gz``: GPT-2's files, MIT-licensed, as
the original GLIDE package ships them) with tiktoken's own loader
(``tiktoken.load.data_gym_to_mergeable_bpe_ranks``) and its gpt2 split pattern. Nothing is
downloaded and nothing outside the package is read, unless ``vocab_dir`` names another folder
(uncompressed or ``.gz`` files). Every file is checked against its sha256 before use.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import logging
import os
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import torch

from .configs import END_TOKEN, N_VOCAB

log = logging.getLogger(__name__)

#: name -> sha256 of the uncompressed file (as pinned by tiktoken_ext.openai_public for gpt2)
VOCAB_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
#: sha256 of the gzip files shipped in ``skinlib/glide/vocab/``
PACKAGED_GZ = {
    "encoder.json": "4debc1cf25180021b07744bc9f4488d53c7bf112c8ce5de8097c6a7518f4ec7c",
    "vocab.bpe": "ce239dd5a898827423fee00e3f7ab37de7900f247f2ba360753d860e8a46524d",
}
_ENV_LOCK = threading.Lock()


class VocabularyError(RuntimeError):
    """The GPT-2 vocabulary files are missing or are not the expected files."""


def _packaged_bytes() -> dict[str, bytes]:
    """Uncompressed bytes of the vocabulary shipped in the package (sha256-checked)."""
    folder = resources.files(__package__).joinpath("vocab")
    out = {}
    for name, sha in VOCAB_FILES.items():
        res = folder.joinpath(f"{name}.gz")
        fix = ("the skinlib installation is incomplete or damaged: reinstall it "
               "(pip install --force-reinstall skinlib, or from the repository)")
        try:
            packed = res.read_bytes()
        except (FileNotFoundError, OSError) as e:
            raise VocabularyError(f"packaged GPT-2 vocabulary {res} is missing ({e}); {fix}") from e
        if hashlib.sha256(packed).hexdigest() != PACKAGED_GZ[name]:
            raise VocabularyError(f"packaged GPT-2 vocabulary {res} has the wrong sha256; {fix}")
        data = gzip.decompress(packed)
        if hashlib.sha256(data).hexdigest() != sha:  # cannot happen if the gz hash matched
            raise VocabularyError(f"packaged GPT-2 vocabulary {res} decompresses to the wrong file; {fix}")
        out[name] = data
    return out


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    """Uncompressed bytes of ``folder/name`` (or ``name.gz``) for both files; clear errors."""
    out = {}
    for name, sha in VOCAB_FILES.items():
        for path, opener in ((folder / name, open), (folder / f"{name}.gz", gzip.open)):
            if path.is_file():
                with opener(path, "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError(f"{path} is not the GPT-2 {name} (sha256 mismatch); replace it "
                                     f"with the file shipped in skinlib/glide/vocab/ (gunzipped)")
                out[name] = data
                break
        else:
            raise VocabularyError(
                f"GPT-2 vocabulary file {name} (or {name}.gz) not found in {folder}: pass a folder "
                f"holding encoder.json and vocab.bpe, or vocab_dir=None for the packaged copies")
    return out


@contextlib.contextmanager
def _tiktoken_cache_disabled():
    """tiktoken copies every file it reads into a cache unless TIKTOKEN_CACHE_DIR is ""."""
    with _ENV_LOCK:
        old = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            yield
        finally:
            if old is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = old


class GlideTokenizer:
    """GPT-2 BPE exactly as GLIDE uses it: ``encode`` lower-cases, adds no special tokens;
    ``padded_tokens_and_mask`` truncates/pads with id 50256 (``<|endoftext|>``)."""

    end_token = END_TOKEN

    def __init__(self, encoding, source: str = ""):
        self.encoding = encoding
        self.source = source

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text.lower()``; the literal text ``<|endoftext|>`` is ordinary text."""
        return self.encoding.encode_ordinary(text.lower())

    def padded_tokens_and_mask(self, ids: Sequence[int], text_ctx: int) -> tuple[list[int], list[bool]]:
        """First ``text_ctx`` ids, right-padded with 50256; mask True for real tokens."""
        ids = list(ids)[:text_ctx]
        n = len(ids)
        return ids + [self.end_token] * (text_ctx - n), [True] * n + [False] * (text_ctx - n)

    def tokenize(self, prompts: Sequence[str], text_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (N str) -> tokens int64 [N, text_ctx], mask bool [N, text_ctx]."""
        if isinstance(prompts, str):
            raise TypeError("tokenize() takes a list of prompts, not a single string")
        pairs = [self.padded_tokens_and_mask(self.encode(p), text_ctx) for p in prompts]
        tokens = torch.tensor([t for t, _ in pairs], dtype=torch.long).view(len(pairs), text_ctx)
        mask = torch.tensor([m for _, m in pairs], dtype=torch.bool).view(len(pairs), text_ctx)
        return tokens, mask


@functools.lru_cache(maxsize=4)
def _load_cached(vocab_dir: Optional[str]) -> GlideTokenizer:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    if vocab_dir is None:
        files, source = _packaged_bytes(), "skinlib/glide/vocab (packaged)"
    else:
        files, source = _folder_bytes(Path(vocab_dir)), vocab_dir
    with tempfile.TemporaryDirectory(prefix="skinlib-gpt2-") as tmp, _tiktoken_cache_disabled():
        paths = {}
        for name, data in files.items():
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"],
            vocab_bpe_hash=VOCAB_FILES["vocab.bpe"], encoder_json_hash=VOCAB_FILES["encoder.json"],
        )
    encoding = tiktoken.Encoding(
        name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: END_TOKEN}, explicit_n_vocab=N_VOCAB,
    )
    log.info("GPT-2 tokenizer loaded from %s", source)
    return GlideTokenizer(encoding, source)


def load_tokenizer(vocab_dir=None) -> GlideTokenizer:
    """The GLIDE tokenizer from the vocabulary shipped in the package (default) or from
    ``vocab_dir`` (a folder with ``encoder.json``/``vocab.bpe``, plain or ``.gz``). Never
    downloads. Missing/corrupt files: :class:`VocabularyError` / ValueError naming the file."""
    return _load_cached(None if vocab_dir is None else str(vocab_dir))
