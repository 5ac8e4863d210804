"""``python -m daskimg``: the command line (see :mod:`daskimg.cli`)."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
