"""``python -m mesaguard.cli``: the ``mesaguard`` command."""

from mesaguard.cli import main

main()
