"""Exceptions of the training loops, shared by the baselines' loop and GLIDE's fine-tuning.

Bottom layer, like :mod:`skinlib.io`: every module may import it; it imports nothing of ours.
(Both classes were defined in ``skinlib/train.py`` before the stage folders.)
"""


class CheckpointError(ValueError):
    """A checkpoint is unreadable, not ours, or does not match the model/settings/data."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite during training."""


class ArmDataError(ValueError):
    """One arm of the evaluation cannot be trained on its data (e.g. no image of a class): that
    arm is reported ``failed`` with the reason and the others go on. Any other exception inside
    an arm (a programming error) stops the evaluation."""
