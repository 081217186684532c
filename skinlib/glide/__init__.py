"""Our GLIDE inference engine, written from ``../shared/glide-parity/spec.md``.

Loads OpenAI's released ``base_inpaint.pt`` / ``upsample_inpaint.pt`` (strict keys/shapes) and
reproduces the original's numbers (parity tests in tests/glide/), faster: PyTorch
scaled-dot-product attention, fp16/bf16 torso, guidance pair in one forward, text encoded
once per prompt.

Modules: :mod:`.configs` (option dicts), :mod:`.tokenizer`, :mod:`.text_encoder`, :mod:`.unet`
(``build_model``), :mod:`.diffusion` (schedules, respacing, p_sample loop),
:mod:`.checkpoints` (cache, download, validation; trained weights folders), :mod:`.pipeline` (``GlideInpainter``).
Training: :mod:`.losses` (hybrid loss, learned variance), :mod:`.masks` (training keep-masks),
:mod:`.finetune` (fine-tuning OpenAI's checkpoints / training the small model; command line).
The GPT-2 vocabulary ships in ``vocab/`` (package data).

The engine takes tensors and returns tensors. May import :mod:`skinlib.io`,
:mod:`skinlib.errors`, :mod:`skinlib.cpu` (native bf16 or not: the ``dtype="auto"`` choice), and (only
:mod:`.finetune`, which trains on a crops folder) :mod:`skinlib.eta`, :mod:`skinlib.training`, :mod:`skinlib.data` and
:mod:`skinlib.viz`; never baselines, augment or evaluation.
"""
from .checkpoints import CheckpointInvalidError, CheckpointUnavailableError, default_cache_dir, load_model
from .diffusion import GaussianDiffusion, PerItemNoise, RecordedNoise, space_timesteps
from .pipeline import GlideInpainter, random_model
from .tokenizer import GlideTokenizer, load_tokenizer
from .unet import GlideUNet, TextCondition, build_model

__all__ = [
    "build_model", "GlideUNet", "TextCondition", "GaussianDiffusion", "space_timesteps",
    "RecordedNoise", "PerItemNoise", "load_tokenizer", "GlideTokenizer", "GlideInpainter",
    "random_model", "load_model", "default_cache_dir", "CheckpointUnavailableError",
    "CheckpointInvalidError",
]
