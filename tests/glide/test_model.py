"""GLIDE U-Net + text encoder: exact state-dict layout and forward parity with the fixtures."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from skinlib.glide import build_model, configs, random_model
from _shared import PARITY, parity_file


TINY = {"tiny_base_inpaint": configs.FIXTURE_TINY_BASE, "tiny_upsample_inpaint": configs.FIXTURE_TINY_UPSAMPLE}


def _load(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(PARITY / name))


def _tiny(name: str):
    model = build_model(TINY[name])
    model.load_state_dict(_load(f"{name}.state_dict.safetensors"), strict=True)
    return model


def test_fixture_files_match_manifest():
    """Every fixture the parity tests read is the file ../shared/glide-parity's manifest lists, byte
    for byte (vocab/: the package's copy); the folder holds nothing else."""
    names = []
    for line in (PARITY / "MANIFEST.sha256").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            name = name.lstrip("*")
            names.append(name)
            assert hashlib.sha256(parity_file(name).read_bytes()).hexdigest() == digest, name
    assert len(names) == 14 and {"vocab/encoder.json.gz", "vocab/vocab.bpe.gz"} <= set(names)
    present = {p.name for p in PARITY.iterdir()}
    assert present == {n for n in names if not n.startswith("vocab/")} | {"MANIFEST.sha256", "README.md"}


def test_option_dicts_equal_fixture_configs():
    cfg = json.loads((PARITY / "configs.json").read_text())
    assert cfg["tiny_base_inpaint"]["options"] == configs.FIXTURE_TINY_BASE
    assert cfg["tiny_upsample_inpaint"]["options"] == configs.FIXTURE_TINY_UPSAMPLE
    for key, name in (("full_base_inpaint", "base-inpaint"), ("full_upsample_inpaint", "upsample-inpaint")):
        info = configs.CHECKPOINTS[name]
        assert cfg[key]["options_defaults_with_inpaint_true"] == dict(info.options)
        assert cfg[key]["checkpoint_url"] == info.url
        assert cfg[key]["checkpoint_file"] == info.file
        assert cfg[key]["num_parameters"] == info.num_parameters


@pytest.mark.parametrize("name", ["base-inpaint", "upsample-inpaint"])
def test_full_size_state_dict_keys_shapes_and_order(name):
    expected = json.loads((PARITY / "full_size_state_dict_keys.json").read_text())[name]
    model = build_model(configs.CHECKPOINTS[name].options, device="meta")  # no memory allocated
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(e["key"], e["shape"]) for e in expected]
    assert sum(v.numel() for v in model.state_dict().values()) == configs.CHECKPOINTS[name].num_parameters
    # the set of tensors the original turns into fp16 on GPU is exactly what we cast
    model.set_compute_dtype(torch.float16)
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in model.state_dict().items()}
    assert dtypes == {e["key"]: e["dtype_if_convert_to_fp16"] for e in expected}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_state_dict_loads_strict_and_matches_derived_structure(name):
    model = _tiny(name)
    derived = json.loads((PARITY / "configs.json").read_text())[name]["derived"]
    sd = model.state_dict()
    assert len(sd) == derived["num_state_dict_keys"]
    assert sum(v.numel() for v in sd.values()) == derived["num_parameters"]
    assert len(model.input_blocks) == derived["num_input_blocks"] == len(model.output_blocks)
    assert model.in_channels == derived["in_channels"]
    attn = {k[: -len(".qkv.weight")]: v.shape[0] // 3 for k, v in sd.items() if k.endswith(".qkv.weight")}
    assert attn == {a["module"]: a["channels"] for a in derived["attention_layers"]}
    heads = {}
    for prefix in attn:
        module = model.get_submodule(prefix)
        heads[prefix] = module.num_heads
    assert heads == {a["module"]: a["num_heads"] for a in derived["attention_layers"]}


@pytest.mark.parametrize("name", sorted(TINY))
def test_random_init_recipe_reproduces_fixture_weights(name):
    seed = json.loads((PARITY / "configs.json").read_text())[name]["init"]["torch_manual_seed"]
    ours = random_model(TINY[name], seed).state_dict()
    ref = _load(f"{name}.state_dict.safetensors")
    for k, v in ref.items():
        torch.testing.assert_close(ours[k], v, atol=1e-6, rtol=0, msg=k)


def _forward(model, f, capture=None):
    with torch.no_grad():
        return model(f["x_t"], f["timesteps"], tokens=f["tokens"], mask=f["mask"],
                     inpaint_image=f["inpaint_image"], inpaint_mask=f["inpaint_mask"],
                     low_res=f.get("low_res"), capture=capture)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("mode", ["plain", "fast", "naive"])
def test_forward_and_activations_match_fixture(name, mode):
    model = _tiny(name)
    if mode == "fast":
        model.set_channels_last(True)
    elif mode == "naive":
        model.set_naive_attention(True)
    f = _load(f"{name}.forward.safetensors")
    capture: dict = {}
    out = _forward(model, f, capture)
    torch.testing.assert_close(out, f["output"], atol=1e-4, rtol=1e-4)
    acts = [k for k in f if k.startswith("act.")]
    assert len(acts) >= 17
    for key in acts:
        ref = f[key]
        got = capture[key[len("act."):]][: ref.shape[0]]  # upsampler blocks: fixture keeps row 0 only
        torch.testing.assert_close(got.float(), ref, atol=1e-4, rtol=1e-4, msg=key)


def test_precomputed_text_equals_tokens_path():
    model = _tiny("tiny_base_inpaint")
    f = _load("tiny_base_inpaint.forward.safetensors")
    text = model.encode_text(f["tokens"], f["mask"])
    with torch.no_grad():
        out = model(f["x_t"], f["timesteps"], text=text, inpaint_image=f["inpaint_image"],
                    inpaint_mask=f["inpaint_mask"])
    torch.testing.assert_close(out, _forward(model, f), atol=0, rtol=0)


def test_bfloat16_error_is_the_rounding_error_of_its_precision():
    """The tolerance is derived, not set to the observed error. Rounding error scales with the unit
    roundoff: the same model in float16 (3 more mantissa bits, enough range for these activations)
    must be eps_bf16 / eps_fp16 = 8 times more accurate, and bfloat16's error must match that (within
    2x either way: a missing cast gives ~0, extra error from a bug does not scale). Its size: at most
    eps_bf16 * sqrt(L) relative RMS for L rounded layers (independent roundings add like a random walk)."""
    f = _load("tiny_upsample_inpaint.forward.safetensors")
    ref = f["output"]
    errs = {}
    for dtype in (torch.bfloat16, torch.float16):
        model = _tiny("tiny_upsample_inpaint").set_channels_last(True).set_compute_dtype(dtype)
        out = _forward(model, f)
        assert out.dtype == torch.float32
        errs[dtype] = (out - ref).abs()
    ratio = torch.finfo(torch.bfloat16).eps / torch.finfo(torch.float16).eps
    assert ratio == 8
    rms = {d: float(e.pow(2).mean().sqrt()) for d, e in errs.items()}
    assert ratio / 2 < rms[torch.bfloat16] / rms[torch.float16] < ratio * 2, rms
    assert float(errs[torch.bfloat16].max()) < 2 * ratio * float(errs[torch.float16].max())
    n_rounded = sum(1 for _ in _tiny("tiny_upsample_inpaint")._torso_modules())
    bound = torch.finfo(torch.bfloat16).eps * n_rounded ** 0.5
    assert rms[torch.bfloat16] / float(ref.pow(2).mean().sqrt()) < bound, (rms, bound)


def test_build_model_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown GLIDE option"):
        build_model({**configs.FIXTURE_TINY_BASE, "num_chanels": 32}, device="meta")
    with pytest.raises(ValueError, match="channel_mult"):
        build_model({**configs.FIXTURE_TINY_BASE, "channel_mult": "1,2,3"}, device="meta")


def test_model_input_errors_are_clear():
    model = random_model(configs.FIXTURE_TINY_UPSAMPLE, 0)
    x, t = torch.zeros(1, 3, 32, 32), torch.tensor([5])
    tokens, mask = torch.full((1, 16), 50256), torch.zeros(1, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="low_res"):
        model(x, t, tokens=tokens, mask=mask)
    with pytest.raises(ValueError, match="text_ctx"):
        model(x, t, tokens=tokens[:, :8], mask=mask[:, :8], low_res=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="tokens"):
        model(x, t, low_res=torch.zeros(1, 3, 16, 16))
