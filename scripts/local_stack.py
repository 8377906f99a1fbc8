"""One command for the local operating environment: ``.venv/bin/python scripts/local_stack.py up``.

Starts Prefect's server and UI, the Google Cloud emulator and two process workers, registers the
deployments from prefect.yaml (and the automation), prints the UI URL; Ctrl-C stops everything.
See ``--help`` and deployments/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local.cli import main

if __name__ == "__main__":
    main()
