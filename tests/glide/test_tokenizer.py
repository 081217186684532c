"""GLIDE tokenizer (tiktoken gpt2 BPE from local vocab files) against the fixture ids."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest

from skinlib.glide import load_tokenizer
from skinlib.glide import tokenizer as tok_mod
from _shared import PARITY, PARITY_VOCAB


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PARITY_VOCAB)


@pytest.fixture(scope="module")
def fixture():
    return json.loads((PARITY / "tokenizer.json").read_text(encoding="utf-8"))


def test_all_fixture_prompts_ids_padding_and_mask(tokenizer, fixture):
    ctx = fixture["text_ctx"]
    assert ctx == 128 and len(fixture["prompts"]) == 25
    for p in fixture["prompts"]:
        ids = tokenizer.encode(p["text"])
        assert ids == p["ids"], repr(p["text"])
        tokens, mask = tokenizer.padded_tokens_and_mask(ids, ctx)
        assert tokens == p["padded_tokens_128"] and mask == p["mask_128"], repr(p["text"])
    # batched tensor form
    texts = [p["text"] for p in fixture["prompts"]]
    tokens, mask = tokenizer.tokenize(texts, ctx)
    assert tokens.tolist() == [p["padded_tokens_128"] for p in fixture["prompts"]]
    assert mask.tolist() == [p["mask_128"] for p in fixture["prompts"]]


def test_lowercasing_special_text_and_truncation(tokenizer):
    assert tokenizer.encode("A Red RASH") == tokenizer.encode("a red rash")
    assert len(tokenizer.encode("<|endoftext|>")) == 7  # literal text, not the special id
    assert 50256 not in tokenizer.encode("<|endoftext|>")
    tokens, mask = tokenizer.padded_tokens_and_mask(list(range(200)), 8)
    assert tokens == list(range(8)) and mask == [True] * 8
    tokens, mask = tokenizer.padded_tokens_and_mask([], 4)
    assert tokens == [50256] * 4 and mask == [False] * 4
    with pytest.raises(TypeError):
        tokenizer.tokenize("a single string", 8)


def test_fixture_tokens_of_the_sampling_prompt(tokenizer):
    from safetensors.torch import load_file

    f = load_file(str(PARITY / "tiny_base_inpaint.sampling.safetensors"))
    tokens, mask = tokenizer.tokenize(["a red rash on the left arm", ""], 8)
    assert tokens.tolist() == f["tokens"].tolist() and mask.tolist() == f["mask"].tolist()


def test_uncompressed_files_in_a_folder_work(tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        with gzip.open(PARITY_VOCAB / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tok = load_tokenizer(tmp_path)
    assert tok.source == str(tmp_path)
    assert tok.encode("hello world") == [31373, 995]


def test_packaged_vocab_reads_nothing_outside_the_package(monkeypatch):
    """Default tokenizer: from skinlib/glide/vocab only - no ../shared, no cache, no network."""
    import builtins
    from pathlib import Path

    from skinlib.glide import checkpoints

    package = Path(tok_mod.__file__).resolve().parent
    opened = []
    real_open = builtins.open

    def watched_open(file, *a, **kw):
        opened.append(Path(file).resolve() if isinstance(file, (str, Path)) else file)
        return real_open(file, *a, **kw)

    def no_network(*a, **kw):
        raise AssertionError("the tokenizer must not download")

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (opened.append(self.resolve()),
                                                          real_open(self, "rb").read())[1])
    monkeypatch.setattr(checkpoints, "_urlopen", no_network)
    monkeypatch.setenv("SKINLIB_SHARED_DIR", "/nonexistent-shared")
    monkeypatch.setenv("SKINLIB_GLIDE_CACHE", "/nonexistent-cache")
    tok_mod._load_cached.cache_clear()
    tok = load_tokenizer()
    assert tok.encode("Hello world") == [31373, 995]
    read = [p for p in opened if isinstance(p, Path) and "gpt2" not in str(p)]
    assert read and all(package in p.parents for p in read), read
    assert "packaged" in tok.source


def test_packaged_vocab_is_checked(monkeypatch, tmp_path):
    import gzip as gz

    fake = tmp_path / "vocab"
    fake.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (fake / f"{name}.gz").write_bytes(gz.compress(b"{}"))

    class FakeFiles:
        def joinpath(self, name):
            return fake if name == "vocab" else None

    monkeypatch.setattr(tok_mod.resources, "files", lambda pkg: FakeFiles())
    tok_mod._load_cached.cache_clear()
    try:
        with pytest.raises(tok_mod.VocabularyError, match="reinstall"):
            load_tokenizer()
    finally:
        tok_mod._load_cached.cache_clear()


def test_missing_vocab_names_files_and_folder(tmp_path):
    with pytest.raises(tok_mod.VocabularyError) as info:
        load_tokenizer(tmp_path / "empty")
    msg = str(info.value)
    assert "encoder.json" in msg and str(tmp_path / "empty") in msg


def test_corrupt_vocab_file_is_rejected(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_tokenizer(tmp_path)
