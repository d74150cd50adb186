"""Transactions: the seeded generator and loading a user's own files."""

from healmesh.data.generator import NO_DRIFT, DriftSpec, generate
from healmesh.data.files import load_transactions

__all__ = ["NO_DRIFT", "DriftSpec", "generate", "load_transactions"]
