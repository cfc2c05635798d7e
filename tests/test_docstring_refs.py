"""Docstrings point only at things that exist (issue 19 item 7): every Sphinx-style reference in ``src/`` resolves
to a module, or to a name defined in one (read from the source: nothing is imported)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROLE = re.compile(r":(?:func|meth|class|mod|data|attr):`~?([^`<]+?)(?: <([^>]+)>)?`")


@cache
def _defined(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    names = re.findall(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)", text, re.M)
    names += re.findall(r"^\s*(\w+)\s*(?::[^=\n]+)?=", text, re.M)  # assignments, annotated fields included
    for targets in re.findall(r"^(\w+(?:,\s*\w+)+)\s*=", text, re.M):  # A, B = ...
        names += re.findall(r"\w+", targets)
    names += re.findall(r"^\s*(?:from\s+\S+\s+)?import\s+.*?\b(\w+)\s*$", text, re.M)  # re-exports
    names += re.findall(r"^\s+(\w+),?$", text, re.M)  # names inside a parenthesised import
    names += re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=", text)  # instance attributes
    return frozenset(names)


def _module_file(dotted: str) -> Path | None:
    base = SRC / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolves(ref: str, here: Path) -> bool:
    parts = ref.rstrip("()").split(".")
    if len(parts) > 1 and parts[0] != "instantid" and importlib.util.find_spec(parts[0]) is not None:
        return True  # a library's (hmac.compare_digest): not ours to check
    if parts[0] != "instantid":  # relative to the module (or a library's name): its last part is defined here
        return parts[-1] in _defined(here) or any(parts[-1] in _defined(p) for p in SRC.rglob("*.py"))
    for split in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:split]))
        if module is not None:
            rest = parts[split:]
            return not rest or all(name in _defined(module) or any(name in _defined(p) for p in SRC.rglob("*.py"))
                                   for name in rest[-1:]) and (len(rest) == 1 or rest[0] in _defined(module))
    return False


def test_every_docstring_reference_resolves() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        for match in ROLE.finditer(path.read_text(encoding="utf-8")):
            ref = (match.group(2) or match.group(1)).strip()
            if not _resolves(ref, path):
                broken.append(f"{path.relative_to(SRC)}: {match.group(0)}")
    assert broken == []
