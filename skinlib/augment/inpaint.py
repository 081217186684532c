"""The iterative mask-and-inpaint augmentation algorithm, its mask samplers and the
edited-area bookkeeping.

One *item* is one (source crop, run) pair. For each item the algorithm repeats ``steps``
times: draw a region (default: one random square of 15/64 of the side, on the 64 px grid of
the base model), let the GLIDE engine re-synthesise that region of the *current* image
(base-inpaint at 64 px with classifier-free guidance, then upsample-inpaint to 256 px), and
continue from the result. Every pixel outside the region is kept exactly, so after the last
step we know precisely which pixels were synthesised (the union of the regions) and when
(the step-index map), and the crop's hand-labelled ill-skin mask stays valid outside them.

The engine is anything with the :class:`skinlib.glide.pipeline.GlideInpainter` ``inpaint``
signature (``images [N,3,256,256]`` in [-1, 1], ``keep_mask [N,1,256,256]`` with 1 = keep,
``prompts``, per-item ``seeds``); all items of a call are batched through it, and every item's
randomness (regions and diffusion noise) comes from its own seed, so results do not depend on
what else is in the batch.

Images here are float tensors in [-1, 1], NCHW, RGB. After every step the image is rounded to
8-bit levels, as if it had been saved and reloaded: the saved output then equals the source
crop byte-for-byte outside the edited area.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_PROMPT = "an image of measles on dark skin"
IMAGE_SIZE = 256   # resolution of the upsample-inpaint model (and of our crops)
GRID = 64          # resolution of the base-inpaint model: regions are drawn on this grid


# ----------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------
def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed derived from ``keys`` (ints or strings) with NumPy's SeedSequence.

    Stable across machines, Python versions and processes (strings are hashed with crc32,
    not Python's salted ``hash``).
    """
    entropy = []
    for k in keys:
        if isinstance(k, str):
            k = zlib.crc32(k.encode("utf-8"))
        k = int(k)
        if k < 0:
            raise ValueError(f"seed keys must be non-negative, got {k}")
        while True:                      # split big ints into 32-bit words
            entropy.append(k & 0xFFFFFFFF)
            k >>= 32
            if not k:
                break
        entropy.append(0x5EED)           # separator so (1, 23) != (12, 3)
    lo, hi = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


def item_seed(seed: int, source_key: str, run: int) -> int:
    """Seed of one variant: from the job seed, the source crop's file name and the run index."""
    return derive_seed(seed, source_key, run)


# ----------------------------------------------------------------------------------------
# regions and mask samplers
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """One step's region to re-synthesise.

    ``mask``: bool array [H, W], True = synthesise (the complement of GLIDE's keep mask);
    ``box``: (y0, x0, y1, x1) bounding box of ``mask`` in pixels, end-exclusive;
    ``info``: the sampler's choices for this step (JSON-able), recorded in the step's history.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    info: dict | None = None

    @classmethod
    def from_mask(cls, mask: np.ndarray, info: dict | None = None) -> "Region":
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise ValueError("a region must contain at least one pixel")
        ys, xs = np.nonzero(mask)
        return cls(mask, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1), info)


class MaskSampler:
    """Draws the region of each step. Subclasses implement :meth:`sample`.

    ``ill_mask`` arguments are bool arrays [H, W] (True = ill skin) at the image resolution.
    """

    name = "sampler"
    needs_mask = False    # True: draws from the crop's ill-skin mask (a crop without one is unusable)

    def unusable_reason(self, ill_mask: np.ndarray) -> str | None:
        """Why this sampler cannot draw regions for a crop with this mask (``None``: it can)."""
        return None

    def check_steps(self, steps: int) -> None:
        """Raise ValueError when the sampler cannot serve ``steps`` steps."""

    def sample(self, rng: np.random.Generator, ill_mask: np.ndarray, step: int) -> Region:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class RandomSquares(MaskSampler):
    """Random squares on the base model's grid (the study's sampler with the defaults).

    ``side``: square side as a fraction of the image (15/64 in the study); ``grid``: the grid
    the squares snap to (64 = the base model's pixels); ``where``: ``"any"`` (uniform over the
    image), ``"ill"`` (squares lying mostly on ill skin) or ``"healthy"`` (mostly on healthy
    skin); ``min_overlap``: the fraction of the square that must lie on the wanted skin. When
    no square reaches it, the squares with the largest overlap are used, and the step records
    it: ``Region.info`` (-> the step's history) holds ``overlap`` (wanted-skin fraction of the
    drawn square, the smallest one when ``count`` > 1), ``min_overlap`` (the requirement
    applied) and, when no square reached ``min_overlap`` and the best overlap the crop allows
    was applied instead, ``min_overlap_lowered_from`` (the configured value). A crop with no
    wanted skin at all is unusable (see :meth:`unusable_reason`). ``count`` squares per step.
    """

    def __init__(self, side: float = 15 / 64, *, where: str = "any", min_overlap: float = 0.5,
                 count: int = 1, grid: int = GRID, image_size: int = IMAGE_SIZE):
        if where not in ("any", "ill", "healthy"):
            raise ValueError(f"where must be 'any', 'ill' or 'healthy', got {where!r}")
        if not 0 < side <= 1:
            raise ValueError(f"side must be a fraction of the image in (0, 1], got {side}")
        if image_size % grid:
            raise ValueError(f"image_size {image_size} must be a multiple of grid {grid}")
        self.side, self.where, self.min_overlap = side, where, min_overlap
        self.count, self.grid, self.image_size = count, grid, image_size
        self.cells = max(1, round(side * grid))          # square side in grid cells
        self.name = f"squares-{where}" if where != "any" else "squares"
        self.needs_mask = where != "any"

    def describe(self) -> str:
        extra = f", min_overlap={self.min_overlap}" if self.where != "any" else ""
        return (f"{self.name}(side={self.cells}/{self.grid}, count={self.count}{extra})")

    def _wanted_fraction(self, ill_mask: np.ndarray) -> np.ndarray:
        """Fraction of wanted skin in each candidate square, [grid-cells+1, grid-cells+1]."""
        g, c = self.grid, self.cells
        m = np.asarray(ill_mask, dtype=np.float64)
        f = m.shape[0] // g
        cell = m[: g * f, : g * f].reshape(g, f, g, f).mean(axis=(1, 3))   # ill fraction per cell
        if self.where == "healthy":
            cell = 1.0 - cell
        s = np.pad(cell.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return (s[c:, c:] - s[:-c, c:] - s[c:, :-c] + s[:-c, :-c]) / (c * c)

    def unusable_reason(self, ill_mask: np.ndarray) -> str | None:
        if self.where == "any":
            return None
        if ill_mask.shape != (self.image_size, self.image_size):
            return f"mask is {ill_mask.shape}, expected {(self.image_size,) * 2}"
        if self._wanted_fraction(ill_mask).max() <= 0:
            kind = "ill" if self.where == "ill" else "healthy"
            return f"the crop's mask has no {kind} skin for sampler '{self.name}'"
        return None

    def sample(self, rng: np.random.Generator, ill_mask: np.ndarray, step: int) -> Region:
        n = self.grid - self.cells + 1
        frac, required = None, self.min_overlap
        if self.where == "any":
            weights = None
        else:
            frac = self._wanted_fraction(ill_mask).ravel()
            ok = frac >= self.min_overlap - 1e-9
            if not ok.any():
                if frac.max() <= 0:
                    raise ValueError(self.unusable_reason(ill_mask))
                required = float(frac.max())            # lowered: recorded in the step's info
                ok = frac >= required - 1e-9
            weights = ok / ok.sum()
        mask = np.zeros((self.image_size, self.image_size), dtype=bool)
        f = self.image_size // self.grid
        picked = []
        for _ in range(self.count):
            k = int(rng.choice(n * n, p=weights))
            picked.append(k)
            gy, gx = divmod(k, n)
            mask[gy * f:(gy + self.cells) * f, gx * f:(gx + self.cells) * f] = True
        info = None
        if frac is not None:
            info = {"overlap": round(float(min(frac[k] for k in picked)), 4),
                    "min_overlap": round(float(required), 4)}
            if required < self.min_overlap:
                info["min_overlap_lowered_from"] = self.min_overlap
        return Region.from_mask(mask, info)


class UserMask(MaskSampler):
    """Regions given by the user: one mask used at every step, or one mask per step.

    ``masks``: array/tensor [H, W] or [S, H, W] (nonzero / True = synthesise), or a path / list
    of paths to L-mode PNGs (255 = synthesise). Masks are resized (nearest) to ``image_size``.
    """

    name = "user-mask"

    def __init__(self, masks, *, image_size: int = IMAGE_SIZE):
        from PIL import Image

        if isinstance(masks, (str, Path)) or (isinstance(masks, (list, tuple)) and masks
                                               and isinstance(masks[0], (str, Path))):
            paths = [masks] if isinstance(masks, (str, Path)) else list(masks)
            arrays = []
            for p in paths:
                if not Path(p).is_file():
                    raise FileNotFoundError(f"user mask {p} does not exist: give an L-mode PNG, "
                                            f"255 = pixels to synthesise")
                with Image.open(p) as im:
                    arrays.append(np.asarray(im.convert("L")) > 127)
            masks = np.stack(arrays)
        arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"user masks must be [H, W] or [S, H, W], got shape {arr.shape}")
        out = []
        for i, m in enumerate(arr):
            m = m.astype(bool)
            if m.shape != (image_size, image_size):
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                    (image_size, image_size), Image.NEAREST)) > 127
            if not m.any():
                raise ValueError(f"user mask {i} is empty: mark the pixels to synthesise "
                                 f"with 255 / True")
            out.append(m)
        self.masks = out

    def describe(self) -> str:
        """Count and sha256 of the masks as used (after resizing): a resumed job with other
        masks has another description, so it is refused instead of mixing outputs."""
        return f"user-mask({len(self.masks)} mask{'s' if len(self.masks) > 1 else ''}, sha256 {self.sha256()[:16]})"

    def sha256(self) -> str:
        """SHA-256 over the masks' shapes and bits, in step order."""
        import hashlib

        h = hashlib.sha256()
        for m in self.masks:
            h.update(repr(m.shape).encode() + np.packbits(m).tobytes())
        return h.hexdigest()

    def check_steps(self, steps: int) -> None:
        if len(self.masks) not in (1, steps):
            raise ValueError(f"UserMask holds {len(self.masks)} masks but the algorithm runs "
                             f"{steps} steps: give one mask, or exactly one per step")

    def sample(self, rng, ill_mask, step):
        return Region.from_mask(self.masks[0 if len(self.masks) == 1 else step])


def make_sampler(name: str = "squares", *, side: float = 15 / 64, user_masks=None,
                 min_overlap: float = 0.5) -> MaskSampler:
    """Sampler by name: ``"squares"`` (default), ``"squares-ill"``, ``"squares-healthy"`` or
    ``"user"`` (``user_masks`` required: see :class:`UserMask`)."""
    if name in ("squares", "random", "squares-any"):
        return RandomSquares(side)
    if name in ("squares-ill", "ill"):
        return RandomSquares(side, where="ill", min_overlap=min_overlap)
    if name in ("squares-healthy", "healthy"):
        return RandomSquares(side, where="healthy", min_overlap=min_overlap)
    if name in ("user", "user-mask"):
        if user_masks is None:
            raise ValueError("sampler 'user' needs user_masks (a PNG path, list of paths or array; "
                             "command line: --user-masks PNG [PNG ...])")
        return UserMask(user_masks)
    raise ValueError(f"unknown sampler {name!r}: use 'squares', 'squares-ill', "
                     f"'squares-healthy' or 'user'")


# ----------------------------------------------------------------------------------------
# image helpers
# ----------------------------------------------------------------------------------------
def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the 256 levels of an 8-bit PNG (values stay in [-1, 1])."""
    return torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] or [3,H,W] in [-1, 1] -> uint8 [N,H,W,3] / [H,W,3]."""
    arr = torch.round((images.detach().float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return arr.movedim(-3, -1).cpu().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] or [N,H,W,3] -> float [3,H,W] / [N,3,H,W] in [-1, 1]."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8)).float() / 127.5 - 1
    return t.movedim(-1, -3).contiguous()


def grid_cover(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Smallest mask made of whole cells of the ``grid`` x ``grid`` lattice that covers ``mask``
    (bool [H, W]); a region aligned so the 64 px base model sees exactly what is edited."""
    h, w = mask.shape
    f = h // grid
    if h % grid or w != h:
        return mask
    cells = mask.reshape(grid, f, grid, f).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, f, 0), f, 1)


def feather_alpha(mask: np.ndarray, width: float) -> np.ndarray:
    """Blend weight in [0, 1] that is 0 outside ``mask``, ramps up over ``width`` pixels
    inside it and is 1 deeper inside (float32 [H, W])."""
    from scipy.ndimage import distance_transform_edt

    if width <= 0:
        return mask.astype(np.float32)
    dist = distance_transform_edt(mask)
    return np.clip(dist / width, 0, 1).astype(np.float32)


def zoom_window(box: tuple[int, int, int, int], zoom: float, size: int = IMAGE_SIZE,
                margin: int = 8) -> tuple[int, int, int]:
    """Square window (y0, x0, side) of about ``size / zoom`` pixels that contains ``box``
    plus ``margin`` pixels of context on each side, clamped to the image."""
    y0, x0, y1, x1 = box
    side = max(int(round(size / zoom)), y1 - y0 + 2 * margin, x1 - x0 + 2 * margin)
    side = min(size, side + (-side) % 4)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    wy = int(np.clip(round(cy - side / 2), 0, size - side))
    wx = int(np.clip(round(cx - side / 2), 0, size - side))
    return wy, wx, side


# ----------------------------------------------------------------------------------------
# the algorithm
# ----------------------------------------------------------------------------------------
@dataclass
class InpaintResult:
    """Outcome of the algorithm for one item.

    ``image``: uint8 [H,W,3] final image; ``edited``: bool [H,W] union of edited areas;
    ``step_map``: uint8 [H,W], the last step (1-based) that edited each pixel, 0 = never;
    ``history``: one dict per step (``step``, ``box`` (y0,x0,y1,x1), ``pixels``, ``window``
    when zoomed, the sampler's ``Region.info``: ``overlap`` / ``min_overlap`` for the ill and
    healthy squares); ``ill_mask``: bool [H,W] carried ill-skin mask of the source (True = ill);
    ``frames``: uint8 [H,W,3] images source, step 1, ..., step S (only when kept).
    """

    image: np.ndarray
    edited: np.ndarray
    step_map: np.ndarray
    history: list[dict]
    ill_mask: np.ndarray
    seed: int
    frames: list[np.ndarray] | None = None

    @property
    def edited_fraction(self) -> float:
        return float(self.edited.mean())

    @property
    def ill_edited(self) -> np.ndarray:
        """bool [H,W]: ill-skin pixels of the carried mask that were re-synthesised."""
        return self.ill_mask & self.edited


@dataclass
class IterativeInpainting:
    """The study's augmentation algorithm around a GLIDE engine.

    ``inpainter``: a :class:`skinlib.glide.pipeline.GlideInpainter` (or anything with its
    ``inpaint`` signature); ``steps``: inpainting steps per variant (12 in the study);
    ``sampler``: the region sampler (default: one random 15/64 square per step);
    ``prompt``; ``guidance_scale``: classifier-free guidance of the base model (5.0);
    ``upsample_temp``: temperature of the upsampler's initial noise (0.997); ``zoom``: when
    set (e.g. 2.0), each step inpaints a window of about 1/zoom of the image around the
    region at the model's full resolution and pastes the region back, blended over
    ``feather`` pixels inside the region only (pixels outside the region stay exact).
    """

    inpainter: object
    steps: int = 12
    sampler: MaskSampler = field(default_factory=RandomSquares)
    prompt: str = DEFAULT_PROMPT
    guidance_scale: float = 5.0
    upsample_temp: float = 0.997
    zoom: float | None = None
    feather: float = 6.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.zoom is not None and self.zoom < 1:
            raise ValueError(f"zoom must be >= 1 (1/zoom of the image is inpainted), got {self.zoom}")
        self.sampler.check_steps(self.steps)

    def settings(self) -> dict:
        """JSON-able description of the algorithm's settings (for manifests)."""
        return {"steps": self.steps, "sampler": self.sampler.describe(), "prompt": self.prompt,
                "guidance": self.guidance_scale, "upsample_temp": self.upsample_temp,
                "zoom": self.zoom, "feather": self.feather if self.zoom else None}

    def _engine(self, images: torch.Tensor, keep: torch.Tensor, seeds: list[int],
                progress: bool = False, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = [self.prompt] * len(seeds) if prompts is None else list(prompts)
        out = self.inpainter.inpaint(images, keep, prompts, seeds,
                                     guidance_scale=self.guidance_scale,
                                     upsample_temp=self.upsample_temp, progress=progress)
        return out.detach().float().cpu()

    def step(self, images: torch.Tensor, regions: Sequence[Region], seeds: list[int], *,
             progress: bool = False, prompts: Sequence[str] | None = None):
        """One inpainting step for a batch: ``images`` float [N,3,256,256] in [-1, 1] (8-bit
        levels), one region each. Returns (new images quantised to 8 bit, bool [N,H,W] edited
        pixels, per-item window or None). Outside its edited pixels each image is unchanged.
        ``progress``: show the engine's own diffusion progress bars for this call;
        ``prompts``: one prompt per item (default: ``self.prompt`` for all)."""
        n, _, h, w = images.shape
        if self.zoom is None:
            edit = np.stack([grid_cover(r.mask) for r in regions])           # [N,H,W]
            edit_t = torch.from_numpy(edit)[:, None]
            out = self._engine(images, (~edit_t).float(), seeds, progress, prompts)
            windows = [None] * n
        else:
            crops, keeps, windows, alphas, edit = [], [], [], [], []
            for img, r in zip(images, regions):
                wy, wx, side = zoom_window(r.box, self.zoom, h)
                windows.append((wy, wx, side))
                crop = img[None, :, wy:wy + side, wx:wx + side]
                crops.append(F.interpolate(crop, size=(h, w), mode="bicubic",
                                           align_corners=False).clamp(-1, 1)[0])
                sub = r.mask[wy:wy + side, wx:wx + side]
                big = F.interpolate(torch.from_numpy(sub)[None, None].float(), size=(h, w),
                                    mode="nearest")[0, 0].numpy() > 0.5
                keeps.append(torch.from_numpy(~grid_cover(big)).float()[None])
                alphas.append(feather_alpha(r.mask, self.feather))
                edit.append(r.mask)
            zoomed = self._engine(torch.stack(crops), torch.stack(keeps), seeds, progress, prompts)
            out = images.clone()
            for i, (wy, wx, side) in enumerate(windows):
                small = F.interpolate(zoomed[i:i + 1], size=(side, side), mode="bicubic",
                                      align_corners=False, antialias=True).clamp(-1, 1)[0]
                a = torch.from_numpy(alphas[i][wy:wy + side, wx:wx + side])[None]
                out[i, :, wy:wy + side, wx:wx + side] = (
                    a * small + (1 - a) * images[i, :, wy:wy + side, wx:wx + side])
            edit = np.stack(edit)
        edit_t = torch.from_numpy(edit)[:, None]
        # the engine keeps known pixels; enforce it exactly so the bookkeeping is exact
        out = torch.where(edit_t, quantize(out), images)
        return out, edit, windows

    def run(self, images: torch.Tensor, ill_masks: torch.Tensor, seeds: Sequence[int], *,
            keep_frames: bool | Sequence[bool] = False,
            on_step: Callable[[int], None] | None = None,
            engine_progress_first: bool = False,
            prompts: Sequence[str] | None = None) -> list[InpaintResult]:
        """Run all ``steps`` on a batch of items in one engine call per step.

        ``images``: float [N,3,256,256] in [-1, 1] (rounded to 8-bit levels first);
        ``ill_masks``: [N,1,256,256], 1 = ill skin (carried along; used by the ill/healthy
        samplers); ``seeds``: one int per item, the only source of its randomness (regions
        and diffusion noise), e.g. from :func:`item_seed`; ``keep_frames``: keep every step's
        image (for GIFs), for all items or per item; ``on_step(n)`` is called after each
        step with the number of items that advanced (for progress bars);
        ``engine_progress_first``: show the engine's diffusion progress during the first step
        (feedback while a slow first call is timed as the warm-up); ``prompts``: one prompt per
        item (e.g. rendered from a template per source, :mod:`skinlib.augment.prompts`;
        default: ``self.prompt`` for every item).
        """
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N,3,H,W], got {tuple(images.shape)}")
        if ill_masks.shape[0] != n or len(seeds) != n:
            raise ValueError(f"{n} images but {ill_masks.shape[0]} masks and {len(seeds)} seeds")
        if prompts is not None and (isinstance(prompts, str) or len(prompts) != n):
            raise ValueError(f"prompts must be a list of {n} strings (one per image), got {prompts!r:.80}")
        keep = [keep_frames] * n if isinstance(keep_frames, bool) else list(keep_frames)
        x = quantize(images.detach().float().cpu())
        ill = ill_masks.detach().cpu()[:, 0].numpy() > 0.5
        for i, m in enumerate(ill):
            reason = self.sampler.unusable_reason(m)
            if reason:
                raise ValueError(f"item {i}: {reason}")
        rngs = [np.random.default_rng(derive_seed(s, "regions")) for s in seeds]
        h, w = x.shape[-2:]
        edited = np.zeros((n, h, w), dtype=bool)
        step_map = np.zeros((n, h, w), dtype=np.uint8)
        history: list[list[dict]] = [[] for _ in range(n)]
        frames = [[to_uint8(x[i])] if keep[i] else None for i in range(n)]
        for s in range(self.steps):
            regions = [self.sampler.sample(rngs[i], ill[i], s) for i in range(n)]
            step_seeds = [derive_seed(seeds[i], "step", s) for i in range(n)]
            x, edit, windows = self.step(x, regions, step_seeds,
                                         progress=engine_progress_first and s == 0, prompts=prompts)
            for i in range(n):
                edited[i] |= edit[i]
                step_map[i][edit[i]] = min(s + 1, 255)
                entry = {"step": s + 1, "box": list(Region.from_mask(edit[i]).box),
                         "pixels": int(edit[i].sum()), **(regions[i].info or {})}
                if windows[i] is not None:
                    entry["window"] = list(windows[i])
                history[i].append(entry)
                if keep[i]:
                    frames[i].append(to_uint8(x[i]))
            if on_step is not None:
                on_step(n)
        final = to_uint8(x)
        return [InpaintResult(final[i], edited[i], step_map[i], history[i], ill[i],
                              int(seeds[i]), frames[i]) for i in range(n)]


# ----------------------------------------------------------------------------------------
# animation
# ----------------------------------------------------------------------------------------
def steps_gif_bytes(frames: Sequence[np.ndarray], *, duration_ms: int = 400,
                    boxes: Sequence[Sequence[int]] | None = None,
                    label: str | None = None) -> bytes:
    """Animated GIF (looping) of ``frames`` (uint8 [H,W,3]: source, step 1, ...).

    ``boxes``: optional region box per step (drawn on the frame *after* that step);
    ``label``: text drawn in the corner of every frame (e.g. "tiny RANDOM weights").
    """
    from PIL import Image, ImageDraw

    images = []
    for k, f in enumerate(frames):
        im = Image.fromarray(np.asarray(f, dtype=np.uint8)).convert("RGB")
        draw = ImageDraw.Draw(im)
        if boxes is not None and k >= 1:
            y0, x0, y1, x1 = boxes[k - 1]
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 0))
        text = "source" if k == 0 else f"step {k}"
        if label:
            text = f"{text} - {label}"
        draw.text((3, 2), text, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
        images.append(im.quantize(colors=255, method=Image.Quantize.FASTOCTREE))
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0, optimize=False)
    return buf.getvalue()


def save_steps_gif(path, frames, **kwargs) -> None:
    """Atomically write :func:`steps_gif_bytes` to ``path``."""
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, steps_gif_bytes(frames, **kwargs))
