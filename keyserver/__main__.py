import sys

from keyserver.cli import main

# Guarded: policy evaluation workers (keyserver/evaluation.py) are spawned processes, which import the
# parent's main module again; unguarded, `python -m keyserver serve` would start a server in each.
if __name__ == "__main__":
    sys.exit(main())
