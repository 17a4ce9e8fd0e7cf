"""`python -m imbill`: the same CLI as the `imbill` command."""

from imbill.cli import main

main()
