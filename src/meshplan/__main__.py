"""`python -m meshplan` runs the CLI."""

from meshplan.cli.main import main

main()
