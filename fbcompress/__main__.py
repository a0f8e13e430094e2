"""`python -m fbcompress` (and `torchrun -m fbcompress`) run the CLI."""

from fbcompress.cli import main
from fbcompress.quickstart import die_with_parent

if __name__ == "__main__":
    die_with_parent()  # a quickstart stage's child process ends with its quickstart
    main()
