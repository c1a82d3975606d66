"""``python -m lmforge`` (and ``torchrun -m lmforge``) runs the CLI."""

from lmforge.cli.main import main

if __name__ == "__main__":
    main()
