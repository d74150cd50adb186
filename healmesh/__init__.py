"""healmesh: a self-healing ML serving mesh for card-fraud scoring."""

__version__ = "0.1.0"
