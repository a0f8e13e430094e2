"""`python -m fbcompress` (and `torchrun -m fbcompress`) run the CLI."""

from fbcompress.commands.cli import main

if __name__ == "__main__":
    main()
