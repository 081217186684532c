"""Profiles: the defaults of notebooks 02-05 that depend on the machine ("cpu-demo" / "study").

A notebook's profile-controlled parameters default to None ("from the profile"); right after its
parameters cell (and the smoke cell) it calls :func:`resolve_profile`, which fills every None with
the profile's value and keeps every value the user set (papermill ``-p``, the main job's params
YAML, the smoke cell). "auto" is "study" on a CUDA device and "cpu-demo" otherwise (smoke runs:
always "cpu-demo", the tiny settings are a pipeline check). The table is other/docs/profiles.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

# "cpu-demo": the defaults the README's CPU numbers come from. "study": the study's settings,
# sized for a GPU. Every stage lists the same names in both profiles.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu-demo": {
        "02": {"image_size": 64, "epochs": 10},
        "03": {"image_size": 64, "epochs": 10},
        "04": {"weights": "auto", "runs": 5, "steps": 6, "max_sources": 11,
               "base_respacing": "100", "upsample_respacing": "fast27"},
        "05": {"n_samples": 200},
    },
    "study": {
        "02": {"image_size": 256, "epochs": 100},
        "03": {"image_size": 256, "epochs": 100},
        "04": {"weights": "official", "runs": 5, "steps": 12, "max_sources": 0,
               "base_respacing": "100", "upsample_respacing": "fast27"},
        "05": {"n_samples": 1000},
    },
}
CHOICES = ("auto", *PROFILES)


@dataclass(frozen=True)
class Resolved:
    """A resolved profile: ``name`` ("cpu-demo" / "study"), what was ``asked`` ("auto" ...), the
    ``device`` type it was resolved for, ``values`` (every profile-controlled parameter of the
    stage -> the value the notebook uses) and ``set_by_profile`` (those the user left None)."""

    asked: str
    name: str
    device: str
    stage: str
    values: dict
    set_by_profile: tuple

    def record(self) -> dict:
        """JSON-able record for the stage's manifest and run.json."""
        return {"asked": self.asked, "name": self.name, "device": self.device, "values": dict(self.values),
                "set_by_profile": list(self.set_by_profile)}

    def describe(self) -> str:
        """Lines to print at the top of the notebook: the profile and every value it set."""
        how = f"profile {self.asked!r} -> {self.name!r}" if self.asked != self.name else f"profile {self.name!r}"
        lines = [f"{how} (device: {self.device})"]
        for k, v in self.values.items():
            lines.append(f"  {k} = {v!r}" + ("   (profile)" if k in self.set_by_profile else "   (set explicitly)"))
        return "\n".join(lines)


def device_type(device: str | torch.device | None) -> str:
    """"cuda" / "cpu" / ...: the type of ``device``; None, "" or "auto": cuda when available."""
    if device is None or (isinstance(device, str) and device.strip() in ("", "auto")):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device (use '', 'auto', 'cpu', 'cuda', 'cuda:1').") from e


def profile_name(profile: str, device: str | torch.device | None, smoke: bool = False) -> str:
    """The profile "auto" stands for: "study" on a CUDA device, else "cpu-demo" (smoke: "cpu-demo")."""
    if profile not in CHOICES:
        raise ValueError(f"profile={profile!r}: use one of {list(CHOICES)} (see other/docs/profiles.md).")
    if profile != "auto":
        return profile
    return "study" if device_type(device) == "cuda" and not smoke else "cpu-demo"


def resolve_profile(profile: str, stage: str, device: str | torch.device | None,
                    explicit: Mapping[str, Any], smoke: bool = False) -> Resolved:
    """Resolve ``profile`` for notebook ``stage`` ("02".."05") on ``device``: each of the profile's
    parameters takes ``explicit[name]`` when that is not None (the user's value wins), else the
    profile's value. ``explicit`` may be the notebook's ``globals()``; only the profile's names are read."""
    name = profile_name(profile, device, smoke)
    if stage not in PROFILES[name]:
        raise ValueError(f"stage={stage!r}: profiles cover the notebooks {sorted(PROFILES[name])}.")
    values, by_profile = {}, []
    for key, default in PROFILES[name][stage].items():
        if explicit.get(key) is None:
            values[key] = default
            by_profile.append(key)
        else:
            values[key] = explicit[key]
    return Resolved(asked=profile, name=name, device=device_type(device), stage=stage, values=values,
                    set_by_profile=tuple(by_profile))
