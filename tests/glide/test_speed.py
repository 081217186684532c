"""GLIDE U-Net speed paths: cached text keys/values and the torch.compile switch (no fixtures needed)."""
from __future__ import annotations

import logging

import pytest
import torch

from skinlib.glide import configs, random_model
from skinlib.glide.unet import AttentionBlock


def _inputs(model, b: int = 2):
    g = torch.Generator().manual_seed(0)
    size, ctx = model.options["image_size"], model.text_ctx
    tokens = torch.randint(0, 50000, (b, ctx), generator=g)
    mask = torch.rand(b, ctx, generator=g) < 0.5
    x = torch.randn(b, 3, size, size, generator=g)
    img = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    keep = (torch.rand(b, 1, size, size, generator=g) < 0.5).float()
    return tokens, mask, dict(x_t=x, timesteps=torch.tensor([999, 254][:b]), inpaint_image=img, inpaint_mask=keep)


def test_text_keys_values_cached_per_prompt_and_invalidated_by_new_weights(monkeypatch):
    model = random_model(configs.FIXTURE_TINY_BASE, 0).set_channels_last(True)
    tokens, mask, kw = _inputs(model)
    calls = []
    real = AttentionBlock.text_kv
    monkeypatch.setattr(AttentionBlock, "text_kv", lambda self, t: calls.append(1) or real(self, t))
    n_blocks = len(model._attention_blocks)
    assert n_blocks == sum(isinstance(m, AttentionBlock) for m in model.modules()) > 0
    with torch.no_grad():
        ref = model(tokens=tokens, mask=mask, **kw)          # tokens path: no reuse possible
        text = model.encode_text(tokens, mask)
        calls.clear()
        a = model(text=text, **kw)
        b = model(text=text, **kw)
    assert len(calls) == n_blocks                              # once for two forwards
    assert torch.equal(a, b) and torch.equal(a, ref)           # the cache changes no bit
    with torch.no_grad():                                      # new weights: the cache is not reused
        model._attention_blocks[0].encoder_kv.weight.mul_(2)
        c = model(text=text, **kw)
    assert len(calls) == 2 * n_blocks and not torch.equal(c, a)
    # with gradients (training) nothing is cached: each forward sees the current weights
    calls.clear()
    model(text=model.encode_text(tokens, mask), **kw).sum().backward()
    assert len(calls) == n_blocks and model._attention_blocks[0].encoder_kv.weight.grad is not None


def test_set_compile_without_compiler_stays_eager_with_one_warning(monkeypatch, caplog):
    import skinlib.glide.unet as unet

    model = random_model(configs.FIXTURE_TINY_BASE, 0)
    tokens, mask, kw = _inputs(model)
    with torch.no_grad():
        ref = model(tokens=tokens, mask=mask, **kw)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(unet.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile must not be called"))
    with caplog.at_level(logging.WARNING, logger="skinlib.glide.unet"):
        model.set_compile(True)
    assert model.compile_status.startswith("eager (torch.compile unavailable: no C++ compiler")
    assert [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()] == [
        "GLIDE U-Net: torch.compile unavailable (no C++ compiler found (install g++ or set CXX)); running eager"]
    with torch.no_grad():
        assert torch.equal(model(tokens=tokens, mask=mask, **kw), ref)


def test_set_compile_failure_at_first_call_falls_back_to_eager(monkeypatch, caplog):
    from torch._dynamo.exc import BackendCompilerFailed

    model = random_model(configs.FIXTURE_TINY_BASE, 0)
    tokens, mask, kw = _inputs(model)
    with torch.no_grad():
        ref = model(tokens=tokens, mask=mask, **kw)

    def broken(fn, **_):
        def call(*a, **k):
            raise BackendCompilerFailed("inductor", RuntimeError("C++ compile error: cc1plus killed"), None)
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model.set_compile(True)
    assert model.compile_status.startswith("compiled")
    with caplog.at_level(logging.WARNING, logger="skinlib.glide.unet"), torch.no_grad():
        out = model(tokens=tokens, mask=mask, **kw)
        again = model(tokens=tokens, mask=mask, **kw)     # no second attempt, no second warning
    assert torch.equal(out, ref) and torch.equal(again, ref)
    assert model.compile_status.startswith("eager (torch.compile failed:")
    assert len([r for r in caplog.records if "torch.compile failed" in r.getMessage()]) == 1


def test_compiled_path_is_used_only_without_gradients_and_capture(monkeypatch):
    model = random_model(configs.FIXTURE_TINY_BASE, 0)
    tokens, mask, kw = _inputs(model)
    seen = []

    def fake_compile(fn, **_):
        def call(*a, **k):
            seen.append(1)
            return fn(*a, **k)
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    model.set_compile(True)
    with torch.no_grad():
        model(tokens=tokens, mask=mask, **kw)
        model(tokens=tokens, mask=mask, capture={}, **kw)
    model(tokens=tokens, mask=mask, **kw)
    assert seen == [1]
    model.set_compile(False)
    with torch.no_grad():
        model(tokens=tokens, mask=mask, **kw)
    assert seen == [1] and model.compile_status == "off"
