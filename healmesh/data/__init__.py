"""Transactions: the seeded generator and loading a user's own files."""

from healmesh.data.files import load_transactions
from healmesh.data.generator import NO_DRIFT, DriftSpec, generate

__all__ = ["NO_DRIFT", "DriftSpec", "generate", "load_transactions"]
