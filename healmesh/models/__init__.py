"""Model adapters. Each follows one contract (``BinaryModel``): fit, predict_proba on the encoded
matrix, save to and load from a *bundle* directory (``meta.json`` plus native weights).

Framework imports stay inside ``xgb`` and ``mlp``: importing this package pulls in neither.
"""

from healmesh.models.bundle import BinaryModel, BundleMeta, load_bundle, save_bundle

__all__ = ["BundleMeta", "BinaryModel", "load_bundle", "save_bundle"]
