"""The local operating environment: Prefect's own server and UI, the Google Cloud emulator and a
process worker, started together by one command (``python scripts/local_stack.py up``).

Only local tooling and tests import this package; the flows never do.
"""

from local.stack import LocalStack, StackConfig, StackError

__all__ = ["LocalStack", "StackConfig", "StackError"]
