"""``python -m emulator.ollama --engine {llama,sim} ...`` (see ``--help``)."""

import sys

from emulator.ollama.cli import main

sys.exit(main())
