"""``python -m daskimg.run``: the command line under its first name; ``python -m daskimg`` is the same."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
