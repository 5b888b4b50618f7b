"""``python -m loadtest``: the same as ``python run.py loadtest``."""

import sys

from loadtest.cli import main

if __name__ == "__main__":  # generator processes (spawned) import this module again
    sys.exit(main(sys.argv[1:]))
