"""A one-line progress bar on stderr (no dependency)."""

import sys


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total, enabled=True):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0

    def step(self, label):
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {label:<24}")
            sys.stderr.flush()
            if self.done == self.total:
                sys.stderr.write("\n")
