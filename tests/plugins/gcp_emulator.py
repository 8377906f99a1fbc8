"""Fixtures that start `emulator.gcp` for tests (filled in by the Google Cloud emulator work)."""
