"""GLIDE tokenizer (tiktoken gpt2 BPE from local vocab files) against the fixture ids."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest

from skinlib.glide import CheckpointUnavailableError, load_tokenizer
from skinlib.glide import tokenizer as tok_mod
from _shared import PARITY, needs_parity


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PARITY / "vocab", download=False)


@pytest.fixture(scope="module")
def fixture():
    return json.loads((PARITY / "tokenizer.json").read_text(encoding="utf-8"))


@needs_parity
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


@needs_parity
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


@needs_parity
def test_fixture_tokens_of_the_sampling_prompt(tokenizer):
    from safetensors.torch import load_file

    f = load_file(str(PARITY / "tiny_base_inpaint.sampling.safetensors"))
    tokens, mask = tokenizer.tokenize(["a red rash on the left arm", ""], 8)
    assert tokens.tolist() == f["tokens"].tolist() and mask.tolist() == f["mask"].tolist()


@needs_parity
def test_uncompressed_files_in_cache_folder_work(tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        with gzip.open(PARITY / "vocab" / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tok = load_tokenizer(cache_dir=tmp_path, download=False)
    assert tok.source == str(tmp_path)
    assert tok.encode("hello world") == [31373, 995]


def test_missing_vocab_offline_names_files_urls_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SKINLIB_SHARED_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointUnavailableError) as info:
        load_tokenizer(tmp_path / "empty", download=False)
    msg = str(info.value)
    assert "encoder.json" in msg and "vocab.bpe" in msg and str(tmp_path / "empty") in msg
    assert tok_mod.VOCAB_FILES["encoder.json"][0] in msg


def test_download_when_offline_gives_clear_error(tmp_path, monkeypatch):
    from skinlib.glide import checkpoints

    def offline(url, timeout=60.0):
        raise OSError("network is unreachable")

    monkeypatch.setattr(checkpoints, "_urlopen", offline)
    monkeypatch.setenv("SKINLIB_SHARED_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointUnavailableError) as info:
        load_tokenizer(cache_dir=tmp_path / "cache")
    assert "encoder.json" in str(info.value) and str(tmp_path / "cache") in str(info.value)
    assert not any((tmp_path / "cache").glob("*"))  # no partial files left behind


@needs_parity
def test_download_into_cache_verifies_hash(tmp_path, monkeypatch):
    """Simulated download (served from the fixture files) lands in the cache and is used."""
    import io

    from skinlib.glide import checkpoints

    served = []

    class Response(io.BytesIO):
        headers: dict = {}

    def fake_urlopen(url, timeout=60.0):
        name = url.rsplit("/", 1)[1]
        served.append(name)
        return Response(gzip.open(PARITY / "vocab" / f"{name}.gz", "rb").read())

    monkeypatch.setattr(checkpoints, "_urlopen", fake_urlopen)
    monkeypatch.setenv("SKINLIB_SHARED_DIR", str(tmp_path / "nowhere"))
    tok = load_tokenizer(cache_dir=tmp_path / "cache")
    assert sorted(served) == ["encoder.json", "vocab.bpe"]
    assert tok.encode("Hello world") == [31373, 995]
    assert (tmp_path / "cache" / "vocab.bpe").is_file()


def test_corrupt_vocab_file_is_rejected(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_tokenizer(tmp_path, download=False)
