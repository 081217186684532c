"""GLIDE's tokenizer: GPT-2 byte-level BPE via tiktoken, lower-cased, right-padded (spec section 4).

tiktoken's built-in ``gpt2`` encoding downloads its two vocabulary files at run time, so we
build the same ``tiktoken.Encoding`` from local copies with tiktoken's own loader
(``tiktoken.load.data_gym_to_mergeable_bpe_ranks``) and its gpt2 split pattern. The files
(``encoder.json``, ``vocab.bpe``; gzipped ``.gz`` copies are accepted too) are looked up in

1. ``vocab_dir`` if given (nothing else is tried),
2. the GLIDE cache folder (``SKINLIB_GLIDE_CACHE`` or the user cache dir, see
   :func:`skinlib.glide.checkpoints.default_cache_dir`),
3. the parity-fixture folder ``../shared/glide-parity/vocab`` (or ``$SKINLIB_SHARED_DIR``)
   when present,

and otherwise downloaded into the cache folder from OpenAI's public URLs. Every file is
checked against the sha256 pinned by tiktoken for the gpt2 encoding before use.
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
from pathlib import Path
from typing import Optional, Sequence

import torch

from .configs import END_TOKEN, N_VOCAB

log = logging.getLogger(__name__)

VOCAB_FILES = {
    # name: (public URL, sha256 of the uncompressed file, as pinned by tiktoken_ext.openai_public)
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
_ENV_LOCK = threading.Lock()


def _shared_vocab_dir() -> Path:
    root = os.environ.get("SKINLIB_SHARED_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared"
    return base / "glide-parity" / "vocab"


def _read_verified(folder: Path, name: str) -> Optional[bytes]:
    """Uncompressed bytes of ``folder/name`` (or ``name.gz``) if present; error if corrupt."""
    _, sha = VOCAB_FILES[name]
    for path, opener in ((folder / name, open), (folder / f"{name}.gz", gzip.open)):
        if path.is_file():
            with opener(path, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(
                    f"{path} is not the GPT-2 {name} (sha256 mismatch); delete it so it can be "
                    f"downloaded again from {VOCAB_FILES[name][0]}"
                )
            return data
    return None


def _vocab_bytes(vocab_dir=None, cache_dir=None, download: bool = True) -> tuple[dict[str, bytes], str]:
    from . import checkpoints

    if vocab_dir is not None:
        folders = [Path(vocab_dir)]
    else:
        folders = [checkpoints.resolve_cache_dir(cache_dir), _shared_vocab_dir()]
    for folder in folders:
        found = {name: _read_verified(folder, name) for name in VOCAB_FILES}
        if all(v is not None for v in found.values()):
            return found, str(folder)  # type: ignore[return-value]
    if vocab_dir is not None or not download:
        where = folders[0]
        raise checkpoints.CheckpointUnavailableError(
            "GPT-2 vocabulary files not found: put "
            + " and ".join(f"{n} (from {u})" for n, (u, _) in VOCAB_FILES.items())
            + f" into {where}"
        )
    cache = folders[0]
    for name, (url, sha) in VOCAB_FILES.items():
        if _read_verified(cache, name) is None:
            checkpoints.download_file(url, cache / name, expected_sha256=sha, what="GPT-2 vocabulary")
    return {name: _read_verified(cache, name) for name in VOCAB_FILES}, str(cache)  # type: ignore[misc]


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
def _load_cached(vocab_dir: Optional[str], cache_dir: Optional[str], download: bool) -> GlideTokenizer:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    files, source = _vocab_bytes(vocab_dir, cache_dir, download)
    with tempfile.TemporaryDirectory(prefix="skinlib-gpt2-") as tmp, _tiktoken_cache_disabled():
        paths = {}
        for name, data in files.items():
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"],
            vocab_bpe_hash=VOCAB_FILES["vocab.bpe"][1], encoder_json_hash=VOCAB_FILES["encoder.json"][1],
        )
    encoding = tiktoken.Encoding(
        name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: END_TOKEN}, explicit_n_vocab=N_VOCAB,
    )
    log.info("GPT-2 tokenizer loaded from %s", source)
    return GlideTokenizer(encoding, source)


def load_tokenizer(vocab_dir=None, *, cache_dir=None, download: bool = True) -> GlideTokenizer:
    """The GLIDE tokenizer from local vocabulary files (see module docstring for the search
    order); downloads them into the cache when missing and ``download`` is true. Offline
    without the files: :class:`~skinlib.glide.checkpoints.CheckpointUnavailableError`."""
    return _load_cached(
        None if vocab_dir is None else str(vocab_dir),
        None if cache_dir is None else str(cache_dir),
        bool(download),
    )
