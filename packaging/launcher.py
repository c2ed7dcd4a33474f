"""The bundle's entry point: the Studio's own ``main`` (PyInstaller needs a script to start from)."""

import sys

from studio.app import main

if __name__ == "__main__":
    sys.exit(main())
