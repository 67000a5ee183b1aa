"""Training: the Fabric loop (`fit`), optimizer and schedule, loggers, progress display."""

from tinylm.train.loop import fit

__all__ = ["fit"]
