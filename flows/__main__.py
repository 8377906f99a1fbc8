"""``python -m flows``: the ``ollama-cloudrun`` command line."""

from flows.cli import main

main()
