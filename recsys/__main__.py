"""`python -m recsys ...` runs the same typer app as the `recsys` console command."""

from recsys.cli import main

main()
