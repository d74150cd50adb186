"""healmesh: a self-healing ML serving mesh for tabular binary classifiers."""

__version__ = "0.1.0"
