"""``python -m local up`` (same as ``python scripts/local_stack.py up``)."""

from local.cli import main

if __name__ == "__main__":
    main()
