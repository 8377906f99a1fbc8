"""Fixtures that start `emulator.ollama` for tests (filled in by the Ollama emulator work)."""
