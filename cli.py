"""`python cli.py ...` runs the same typer app as the `recsys` console command."""

from recsys.cli import main

if __name__ == "__main__":
    main()
