"""The iterative inpainting algorithm, mask samplers and edited-area bookkeeping.

Most tests use ``FakeInpainter`` (below): a deterministic stand-in with the GlideInpainter
``inpaint`` signature that fills the pixels to synthesise from its per-item seed, so the
algorithm's bookkeeping can be checked exactly and fast. The real engine with tiny random
weights is exercised in test_generate.py.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from skinlib.augment.inpaint import (DEFAULT_PROMPT, IterativeInpainting, RandomSquares, Region,
                                     UserMask, derive_seed, feather_alpha, from_uint8, grid_cover,
                                     item_seed, make_sampler, quantize, steps_gif_bytes, to_uint8,
                                     zoom_window)


class FakeInpainter:
    """Deterministic stand-in for skinlib.glide.pipeline.GlideInpainter (tests only).

    Fills pixels with keep_mask == 0 with a smooth pattern drawn from torch.Generator(seeds[i]);
    checks the contract's shapes and value ranges and records every call.
    """

    is_random = True
    identity = {"weights": "fake-test-inpainter", "base_respacing": "4", "upsample_respacing": "5"}

    def __init__(self, fail_after: int | None = None):
        self.calls: list[dict] = []
        self.fail_after = fail_after

    @torch.no_grad()
    def inpaint(self, images, keep_mask, prompts, seeds, *, guidance_scale=5.0,
                upsample_temp=0.997, progress=False):
        n = images.shape[0]
        assert images.shape == (n, 3, 256, 256) and images.dtype == torch.float32
        assert keep_mask.shape == (n, 1, 256, 256)
        assert images.min() >= -1 and images.max() <= 1
        assert set(keep_mask.unique().tolist()) <= {0.0, 1.0}
        assert len(seeds) == n and (isinstance(prompts, str) or len(prompts) == n)
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append({"n": n, "seeds": list(seeds), "prompts": prompts,
                           "guidance": guidance_scale, "temp": upsample_temp,
                           "keep": keep_mask.clone()})
        fills = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            coarse = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
            fills.append(F.interpolate(coarse, size=(256, 256), mode="bilinear", align_corners=False)[0])
        return keep_mask * images + (1 - keep_mask) * torch.stack(fills)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quantize(torch.rand(n, 3, 256, 256, generator=g) * 2 - 1)


def quadrant_mask(n: int) -> torch.Tensor:
    """[N,1,256,256], ill skin (1) in the top-left quadrant."""
    m = torch.zeros(n, 1, 256, 256)
    m[:, :, :128, :128] = 1
    return m


# ---------------------------------------------------------------- seeds and helpers
def test_derive_seed_is_deterministic_and_distinguishes_keys():
    assert derive_seed(0, "000001.png", 1) == derive_seed(0, "000001.png", 1)
    seeds = {item_seed(s, name, r) for s in (0, 1) for name in ("a.png", "b.png") for r in range(5)}
    assert len(seeds) == 20
    assert derive_seed(1, 23) != derive_seed(12, 3)
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError):
        derive_seed(-1)


def test_uint8_roundtrip_and_quantize():
    arr = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    t = from_uint8(arr)
    assert t.shape == (2, 3, 16, 16) and t.min() >= -1 and t.max() <= 1
    np.testing.assert_array_equal(to_uint8(t), arr)
    np.testing.assert_array_equal(to_uint8(quantize(t + 1e-3)), arr)


def test_grid_cover_and_feather():
    m = np.zeros((256, 256), bool)
    m[10:13, 21:22] = True
    cov = grid_cover(m)
    assert cov[8:16, 20:24].all() and cov.sum() == 8 * 4 and (cov | m).sum() == cov.sum()
    sq = np.zeros((256, 256), bool)
    sq[64:128, 64:128] = True
    a = feather_alpha(sq, 6)
    assert a[~sq].max() == 0 and a[96, 96] == 1 and 0 < a[64, 96] < 1


def test_zoom_window_contains_box_and_stays_inside():
    for box in [(0, 0, 60, 60), (196, 196, 256, 256), (100, 40, 160, 100)]:
        wy, wx, side = zoom_window(box, 2.0)
        assert side >= 128 and side % 4 == 0
        assert 0 <= wy and wy + side <= 256 and 0 <= wx and wx + side <= 256
        assert wy <= box[0] and box[2] <= wy + side and wx <= box[1] and box[3] <= wx + side


# ---------------------------------------------------------------- samplers
def test_random_squares_default_matches_study():
    s = RandomSquares()
    rng = np.random.default_rng(0)
    ill = np.zeros((256, 256), bool)
    corners = set()
    for k in range(50):
        r = s.sample(rng, ill, k)
        y0, x0, y1, x1 = r.box
        assert (y1 - y0, x1 - x0) == (60, 60)           # 15/64 of 256
        assert y0 % 4 == 0 and x0 % 4 == 0 and y1 <= 256 and x1 <= 256
        assert r.mask.sum() == 3600 and r.mask[y0:y1, x0:x1].all()
        corners.add((y0, x0))
    assert len(corners) > 40                              # spread over the image


@pytest.mark.parametrize("where", ["ill", "healthy"])
def test_squares_restricted_to_ill_or_healthy_skin(where):
    ill = quadrant_mask(1)[0, 0].numpy() > 0.5
    s = make_sampler(f"squares-{where}", min_overlap=0.8)
    rng = np.random.default_rng(1)
    for k in range(30):
        r = s.sample(rng, ill, k)
        on_ill = ill[r.mask].mean()
        assert (on_ill >= 0.8) if where == "ill" else (on_ill <= 0.2)
    assert s.unusable_reason(ill) is None


def test_restricted_sampler_reports_crop_without_wanted_skin():
    empty = np.zeros((256, 256), bool)
    assert "no ill skin" in make_sampler("squares-ill").unusable_reason(empty)
    assert make_sampler("squares-healthy").unusable_reason(empty) is None
    assert "no healthy skin" in make_sampler("squares-healthy").unusable_reason(~empty)
    # a small lesion below min_overlap: the best-overlapping squares are used
    tiny = empty.copy()
    tiny[100:110, 100:110] = True
    r = make_sampler("squares-ill").sample(np.random.default_rng(0), tiny, 0)
    assert r.mask[100:110, 100:110].all()


def test_lowered_overlap_is_recorded_in_the_step_history():
    """squares-ill lowers its 0.5 overlap requirement on a crop where no square reaches it: each
    such step says so in its history, as every step records its box."""
    tiny = np.zeros((256, 256), bool)
    tiny[100:110, 100:110] = True
    ill = torch.from_numpy(np.stack([tiny, quadrant_mask(1)[0, 0].numpy() > 0.5]))[:, None].float()
    algo = IterativeInpainting(FakeInpainter(), steps=3, sampler=make_sampler("squares-ill"))
    small, big = algo.run(random_images(2), ill, [1, 2])
    for h in small.history:
        assert h["min_overlap_lowered_from"] == 0.5
        assert h["overlap"] == h["min_overlap"] == pytest.approx(100 / 3600, abs=1e-4)
    for h in big.history:
        assert h["min_overlap"] == 0.5 and h["overlap"] >= 0.5 and "min_overlap_lowered_from" not in h


def test_user_mask_sampler(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 30:40] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    s = UserMask(tmp_path / "m.png")                       # resized (nearest) to 256
    r = s.sample(np.random.default_rng(0), np.zeros((256, 256), bool), 3)
    assert r.box == (40, 120, 80, 160) and r.mask.sum() == 40 * 40
    s.check_steps(12)
    per_step = UserMask(np.stack([m > 0, np.roll(m, 5, axis=0) > 0]))
    per_step.check_steps(2)
    with pytest.raises(ValueError, match="one per step"):
        per_step.check_steps(3)
    assert per_step.sample(None, None, 1).box == (60, 120, 100, 160)
    with pytest.raises(ValueError, match="empty"):
        UserMask(np.zeros((256, 256)))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        UserMask(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("circles")


def test_user_mask_description_identifies_the_masks_content(tmp_path):
    m = np.zeros((256, 256), np.uint8)
    m[40:80, 120:160] = 255
    Image.fromarray(m).save(tmp_path / "a.png")
    desc = UserMask(tmp_path / "a.png").describe()
    assert desc.startswith("user-mask(1 mask, sha256 ") and len(desc.split("sha256 ")[1]) == 16 + 1
    assert UserMask(m > 0).describe() == desc                          # same content, array or file
    assert UserMask([tmp_path / "a.png"]).describe() == desc
    moved = np.roll(m, 4, axis=1)
    Image.fromarray(moved).save(tmp_path / "a.png")                    # same file name, other mask
    assert UserMask(tmp_path / "a.png").describe() != desc
    assert UserMask(np.stack([m > 0, moved > 0])).describe() != UserMask(np.stack([moved > 0, m > 0])).describe()
    with pytest.raises(ValueError, match="--user-masks"):
        make_sampler("user")


# ---------------------------------------------------------------- the algorithm
def test_algorithm_edits_only_the_regions_and_records_them():
    engine = FakeInpainter()
    algo = IterativeInpainting(engine, steps=4)
    images, ill = random_images(3), quadrant_mask(3)
    seeds = [item_seed(7, f"{i:06d}.png", 0) for i in range(3)]
    res = algo.run(images, ill, seeds, keep_frames=[True, False, True])
    # one engine call per step for the whole batch, study defaults passed through
    assert [c["n"] for c in engine.calls] == [3] * 4
    assert all(c["prompts"] == [DEFAULT_PROMPT] * 3 and c["guidance"] == 5.0 and c["temp"] == 0.997
               for c in engine.calls)
    src = to_uint8(images)
    for i, r in enumerate(res):
        union = np.zeros((256, 256), bool)
        for h in r.history:
            y0, x0, y1, x1 = h["box"]
            assert h["pixels"] == (y1 - y0) * (x1 - x0) == 3600
            union[y0:y1, x0:x1] = True
            assert (r.step_map[y0:y1, x0:x1] >= h["step"]).all()
        np.testing.assert_array_equal(r.edited, union)
        np.testing.assert_array_equal(r.edited, r.step_map > 0)
        # pixels outside the edited union are the source's bytes, exactly
        np.testing.assert_array_equal(r.image[~r.edited], src[i][~r.edited])
        assert (r.image[r.edited] != src[i][r.edited]).any(axis=-1).mean() > 0.9
        assert 0 < r.edited_fraction <= 4 * 3600 / 256**2
        np.testing.assert_array_equal(r.ill_mask, ill[i, 0].numpy() > 0.5)
        np.testing.assert_array_equal(r.ill_edited, r.ill_mask & r.edited)
    assert len(res[0].frames) == 5 and res[1].frames is None
    np.testing.assert_array_equal(res[0].frames[0], src[0])
    np.testing.assert_array_equal(res[0].frames[-1], res[0].image)


def test_results_do_not_depend_on_batching():
    images, ill = random_images(4, seed=3), quadrant_mask(4)
    seeds = [derive_seed(1, i) for i in range(4)]
    together = IterativeInpainting(FakeInpainter(), steps=3).run(images, ill, seeds)
    apart = [IterativeInpainting(FakeInpainter(), steps=3).run(images[i:i + 1], ill[i:i + 1], seeds[i:i + 1])[0]
             for i in (2, 0, 3, 1)]
    for a, b in zip([apart[1], apart[3], apart[0], apart[2]], together):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.step_map, b.step_map)
        assert a.history == b.history
    other = IterativeInpainting(FakeInpainter(), steps=3).run(images, ill, [s + 1 for s in seeds])
    assert not np.array_equal(other[0].image, together[0].image)


def test_zoomed_window_pastes_back_only_the_region():
    engine = FakeInpainter()
    algo = IterativeInpainting(engine, steps=3, zoom=2.0, feather=4)
    images = random_images(2, seed=5)
    res = algo.run(images, quadrant_mask(2), [11, 12])
    src = to_uint8(images)
    for i, r in enumerate(res):
        np.testing.assert_array_equal(r.image[~r.edited], src[i][~r.edited])
        assert all(h["window"][2] >= 128 for h in r.history)
        union = np.zeros((256, 256), bool)
        for h in r.history:
            y0, x0, y1, x1 = h["box"]
            union[y0:y1, x0:x1] = True
            wy, wx, side = h["window"]
            assert wy <= y0 and y1 <= wy + side and wx <= x0 and x1 <= wx + side
        np.testing.assert_array_equal(r.edited, union)
    # the engine saw the zoomed window: the 60 px square, mapped into the window scaled to 256 px,
    # became a hole twice as large at the matching place (to the 4 px grid)
    assert len(engine.calls) == 3 and all(c["n"] == 2 for c in engine.calls)
    for s, call in enumerate(engine.calls):
        for i, r in enumerate(res):
            hole = (call["keep"][i, 0] == 0).numpy()
            ys, xs = np.nonzero(hole)
            hy0, hx0, hy1, hx1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
            assert hole.sum() == (hy1 - hy0) * (hx1 - hx0)                   # one solid rectangle
            y0, x0, y1, x1 = r.history[s]["box"]
            wy, wx, side = r.history[s]["window"]
            assert side == 128                                               # 256 / zoom 2
            scale = 256 / side
            for got, want in ((hy0, (y0 - wy) * scale), (hx0, (x0 - wx) * scale),
                              (hy1, (y1 - wy) * scale), (hx1, (x1 - wx) * scale)):
                assert abs(got - want) < 4, (s, i, got, want)
            assert hy1 - hy0 >= 2 * (y1 - y0) - 4 and hx1 - hx0 >= 2 * (x1 - x0) - 4


def test_algorithm_rejects_bad_input():
    with pytest.raises(ValueError, match="steps"):
        IterativeInpainting(FakeInpainter(), steps=0)
    with pytest.raises(ValueError, match="one per step"):
        IterativeInpainting(FakeInpainter(), steps=3, sampler=UserMask(np.ones((2, 256, 256))))
    algo = IterativeInpainting(FakeInpainter(), steps=1, sampler=make_sampler("squares-ill"))
    with pytest.raises(ValueError, match="no ill skin"):
        algo.run(random_images(1), torch.zeros(1, 1, 256, 256), [0])
    with pytest.raises(ValueError, match="seeds"):
        algo.run(random_images(2), quadrant_mask(2), [0])


def test_steps_gif():
    frames = [np.full((256, 256, 3), v, np.uint8) for v in (0, 80, 160)]
    data = steps_gif_bytes(frames, label="tiny RANDOM weights", boxes=[(0, 0, 60, 60), (4, 4, 64, 64)])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.size == (256, 256)
    assert Region.from_mask(np.pad(np.ones((2, 3), bool), 5)).box == (5, 5, 7, 8)
