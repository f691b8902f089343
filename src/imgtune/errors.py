"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it."""


def check_counts(**counts: int | None) -> None:
    """``batch_size=64, top_k=0`` -> UserError naming the flag: counts must be >= 1 (``num_workers`` >= 0)."""
    for name, value in counts.items():
        lowest = 0 if name == "num_workers" else 1
        if value is not None and value < lowest:
            raise UserError(f"--{name.replace('_', '-')} must be at least {lowest}, got {value}")
