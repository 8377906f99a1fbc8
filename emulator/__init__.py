"""Local stand-ins for the systems the project talks to (only tests and local tooling import this).

- ``emulator.ollama``: an Ollama-compatible HTTP server (engines ``llama`` and ``sim``).
- ``emulator.gcp``: the Google Cloud control-plane emulator.
"""
