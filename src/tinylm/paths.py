"""Where tinylm keeps its own files: `$TINYLM_HOME` (default ``~/.cache/tinylm``).

Under it: ``models/`` (pretrained models converted once, `tinylm.hub`), ``kernels/`` (the compiled CPU
kernels, `tinylm.cpu_kernels`), ``chat.sqlite`` (saved conversations) and ``sfa/`` (the seed API's runs).
The variable is read at each call, so a test or a user may change it while a process runs.
"""

from __future__ import annotations

import os
from pathlib import Path


def tinylm_home() -> Path:
    """$TINYLM_HOME, read at call time (default ~/.cache/tinylm)."""
    return Path(os.environ.get("TINYLM_HOME", Path.home() / ".cache" / "tinylm"))
