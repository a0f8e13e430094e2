"""`python -m fbcompress` (and `torchrun -m fbcompress`) run the CLI."""

from fbcompress.cli import main

if __name__ == "__main__":
    main()
