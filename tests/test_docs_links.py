"""The documentation's relative links resolve: README.md, data_README.md, other/FIGURES.md,
other/docs/*.md and the notebooks' markdown cells. Every relative link or image must name an
existing file, and every ``#anchor`` (same file or ``file.md#anchor``) a heading of the target
Markdown file, slugged as GitHub does. External http(s) links are not fetched."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220
TEST_COMMAND = "python -m pytest -q --nbval-lax tests notebooks"

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_CODE_SPAN_ACROSS_LINES = re.compile(r"(`+)(?:(?!\n[ \t]*\n).)+?\1", re.DOTALL)  # not across paragraphs
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HTML_ATTR = re.compile(r"\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_HTML_ID = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def documents() -> list[Path]:
    """The Markdown files and notebooks whose links are checked."""
    return [ROOT / "README.md", ROOT / "data_README.md", ROOT / "other" / "FIGURES.md",
            *sorted((ROOT / "other" / "docs").glob("*.md")), *sorted((ROOT / "notebooks").glob("*.ipynb"))]


def markdown_text(path: Path) -> str:
    """A Markdown file's text; for a notebook, its markdown cells one after the other."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return text
    cells = json.loads(text)["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: Markdown marks dropped, lowercase, punctuation except '-' and
    '_' dropped, each space -> '-'."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link or image: its text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: its headings' slugs (a repeated slug gets -1, -2, ...)
    and explicit <a name/id> anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    previous = ""
    for _, line in _prose_lines(markdown_text(path)):
        heading = None
        match = _ATX.match(line)
        if match:
            heading = match.group(2)
        elif re.fullmatch(r"\s{0,3}(=+|-+)\s*", line) and previous.strip() and "|" not in previous:
            heading = previous.strip()  # a setext heading: the line above, underlined
        if heading is not None:
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(a.lower() for a in _HTML_ID.findall(line))
        previous = "" if match else line
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link, image and reference definition outside code (for a
    notebook, line numbers count in its markdown cells joined)."""
    prose_lines = dict(_prose_lines(markdown_text(path)))
    prose = "\n".join(prose_lines.get(n, "") for n in range(1, max(prose_lines, default=0) + 1))
    prose = _CODE_SPAN_ACROSS_LINES.sub(lambda m: "\n" * m.group(0).count("\n"), prose)
    out = []
    for number, line in enumerate(prose.split("\n"), 1):
        for pattern in (_INLINE_LINK, _REF_DEF, _HTML_ATTR):
            out += [(number, target) for target in pattern.findall(line)]
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``path`` that does not resolve, naming the file, line and target."""
    problems = []
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        if file_part.startswith("/"):
            resolved = root / file_part.lstrip("/")
        else:
            resolved = (path.parent / file_part) if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix.lower() == ".md" and unquote(anchor).lower() not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path):
    assert path.is_file(), f"{path} is missing"
    problems = broken_links(path)
    assert not problems, "broken links (fix the path or the heading):\n" + "\n".join(problems)


def test_readme_is_short_and_keeps_the_ci_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    n_lines = len(readme.splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines (at most {README_MAX_LINES}): move detail to other/docs/")
    assert TEST_COMMAND in readme and TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_slug_follows_github():
    assert slug("Training and fine-tuning GLIDE") == "training-and-fine-tuning-glide"
    assert slug("GPU check (not measured yet)") == "gpu-check-not-measured-yet"
    assert slug("Evaluation you can trust (notebook 05, `python -m skinlib.evaluate`)") == \
        "evaluation-you-can-trust-notebook-05-python--m-skinlibevaluate"
    assert slug("Cross-validation: every patient tested once (`--folds K`)") == \
        "cross-validation-every-patient-tested-once---folds-k"
    assert slug("On a GPU / in Colab") == "on-a-gpu--in-colab"
    assert slug("snake_case — and *emphasis*") == "snake_case--and-emphasis"


def test_broken_links_are_found(tmp_path: Path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes(b"")
    (tmp_path / "b.md").write_text("# Title\n\n## Part\n\n## Part\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Here\n\n"
        "[ok](b.md#part-1) ![ok](other/x.png) [ok](#here) [web](https://example.org/none)\n"
        "```\n[in code](missing.md)\n```\n"
        "`[in a span](missing.md)` and `a span\nacross lines [in it](missing.md)`\n"
        "[gone](missing.md) ![gone](other/y.png) [bad](b.md#part-2) [bad](#nowhere)\n")
    problems = broken_links(doc, root=tmp_path)
    assert len(problems) == 4, problems
    assert [p.split(": ")[1] for p in problems] == ["missing.md", "other/y.png", "b.md#part-2", "#nowhere"]
    assert all(p.startswith("a.md:9: ") for p in problems)
