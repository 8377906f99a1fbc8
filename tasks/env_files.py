"""The one reader of KEY=VALUE env files (the emulator's, ``--env-file``, the local stack's).

Blank lines and ``#`` comments are skipped, ``export KEY=VALUE`` is accepted, and one pair of
matching quotes around a value is removed, as a shell would for a plain value. Stdlib only.
"""

from __future__ import annotations

from pathlib import Path


class EnvFileError(ValueError):
    """A line that is not KEY=VALUE; the message names the file and line."""


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            raise EnvFileError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env
