"""Prompt templates per skin group (issue 20, item 2).

A template is a ``str.format`` string whose fields come from the source crop's manifest row and
its patient's Fitzpatrick type (:mod:`skinlib.data.metadata`):

* ``{disease}``: the crop's disease with underscores as spaces ("maculopapular_rash" ->
  "maculopapular rash"); a crop without a disease is refused;
* ``{skin}``: "light" / "medium" / "dark" for the Fitzpatrick groups I-II / III-IV / V-VI;
* ``{fitzpatrick}``: the type as a Roman numeral, "I" ... "VI".

Where the patient's type is unknown, ``{skin}`` and ``{fitzpatrick}`` render as ``unknown``
(default "", the word is left out) and runs of spaces are collapsed: "an image of {disease} on
{skin} skin" -> "an image of measles on skin". The study's fixed prompt, "an image of measles on
dark skin", is the template without fields (the default), rendered alike for every crop.
"""
from __future__ import annotations

import re
import string
from typing import Mapping

from ..data.metadata import SKIN_GROUPS

FIELDS = ("disease", "skin", "fitzpatrick")
SKIN_WORDS = {"I-II": "light", "III-IV": "medium", "V-VI": "dark"}
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}


def template_fields(template: str) -> set[str]:
    """The fields a template uses; ValueError naming an unknown or positional field."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"prompt template {template!r}: {e} (write a literal brace as {{{{ or }}}})") from None
    bad = sorted(n for n in names if n not in FIELDS)
    if bad:
        raise ValueError(f"prompt template {template!r} uses field(s) {bad}; the fields are "
                         f"{', '.join('{' + f + '}' for f in FIELDS)}")
    return names


def render_prompt(template: str, row: Mapping[str, str], fitzpatrick: int | None, *, unknown: str = "") -> str:
    """The prompt of the crop ``row`` (its manifest row) whose patient has Fitzpatrick type
    ``fitzpatrick`` (1-6, or None when unknown)."""
    fields = template_fields(template)
    if not fields:
        return template
    disease = (row.get("disease") or "").strip()
    if "disease" in fields and not disease:
        raise ValueError(f"crop {row.get('image')!r} has no disease in the crops manifest, and the prompt "
                         f"template {template!r} uses {{disease}}: fill the manifest's disease column "
                         f"or use a template without {{disease}}")
    group = SKIN_GROUPS.get(fitzpatrick or 0)
    text = template.format(disease=disease.replace("_", " "),
                           skin=SKIN_WORDS[group] if group else unknown,
                           fitzpatrick=ROMAN[fitzpatrick] if group else unknown)
    return re.sub(r"\s+", " ", text).strip()
