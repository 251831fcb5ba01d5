"""Entry point of the benchmark suite: `python -m bench.run` or `python bench/run.py`.

The suite lives in the modules beside this one (see bench/README.md): cli.py (options
and the order of work), services.py, load.py, cells.py, driver.py, raw.py, facts.py
and report.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
