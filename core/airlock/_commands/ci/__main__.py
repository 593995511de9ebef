"""``python -m airlock._commands.ci ARGS``, as the action shims call it."""

import sys

from airlock._commands.ci import main

if __name__ == "__main__":
    sys.exit(main())
