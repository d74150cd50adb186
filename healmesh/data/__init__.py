"""Data: a project's generator (when it has one) and loading a user's own files."""

from healmesh.data.drift_spec import NO_DRIFT, DriftSpec
from healmesh.data.files import load_transactions
from healmesh.data.synthetic import generate

__all__ = ["NO_DRIFT", "DriftSpec", "generate", "load_transactions"]
