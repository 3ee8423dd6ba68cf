"""``python -m nodulekit`` = the ``nodulekit`` command."""
from nodulekit.cli import main

main()
