"""Where torch keeps what it compiled, so a second process starts warm (:func:`use_compile_cache`).

Apart from :mod:`instantid.speed.fast` because it needs torch alone: a process that only points the caches (a
worker before it loads its model, a benchmark child) does not pay for importing diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path


def use_compile_cache(cache_dir: str | Path) -> str:
    """Point torch's on-disk compile caches (FX graph + AOTAutograd + Triton) at ``cache_dir``.

    Must run before the first compile of the process. A ``TORCHINDUCTOR_CACHE_DIR`` the user set wins; torch's
    own default, which importing inductor writes into that variable, does not.
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit and Path(explicit).resolve() == Path(default_cache_dir()).resolve():
        explicit = None
    folder = Path(explicit or cache_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return str(folder)
