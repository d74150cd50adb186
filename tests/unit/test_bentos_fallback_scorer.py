"""Tests bentos.fallback_scorer: it imports neither xgboost nor torch."""

import subprocess
import sys


def test_fallback_scorer_imports_neither_xgboost_nor_torch():
    code = ("import sys; import bentos.fallback_scorer; "
            "bad = [m for m in ('xgboost', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # the check can fail: the XGBoost scorer does pull xgboost in once it loads a model
    code2 = "import sys; from healmesh.models.xgb import XGBoostModel; print('xgboost' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True).stdout.strip() == "True"
