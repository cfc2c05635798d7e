"""pytest plugin for ``benchmarks/mutation.py``: the tiny demo model built once per mutmut fork server.

mutmut forks a fresh pytest session per mutant from a server that has collected the tests, so the session
fixtures ``demo_app`` and ``model`` would rebuild the demo (seconds) for every mutant. With this plugin the
server builds each once while it collects, and every forked session gets that copy. Only for modules whose code
the build does not run (swap, face detail): a mutant of code that runs while the model is built would be
invisible in a model built before it was switched on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

_built: dict[str, object] = {}


def _patch() -> None:
    import _demo  # the tests' helper module: importable once the tests' conftest is loaded

    if getattr(_demo.demo_model, "prebuilt", False):
        return
    original = _demo.demo_model

    def demo_model(cache_dir: Path) -> object:
        name = Path(cache_dir).name  # "demo-apps" or "demo": the two session models stay two
        if name not in _built:
            _built[name] = original(Path(tempfile.gettempdir()) / "instantid-mutation-demo" / name)
        return _built[name]

    demo_model.prebuilt = True
    _demo.demo_model = demo_model


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    _patch()
    import _demo

    _demo.demo_model(Path("demo-apps"))
