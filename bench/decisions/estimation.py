"""Performance estimated before labels arrive (CBPE, healmesh.policies.estimation) against known
truth. One XGBoost model trained on generated data; its isotonic calibrator is fitted on the
validation and holdout splits (the reference set); then 20 windows of 2,000 fresh rows per
scenario (no drift, covariate shift of several strengths, concept drift). Per window: estimated
AUC from the calibrated probabilities alone, the realised AUC from the window's labels, and the
check ``compare`` would make when those labels arrive.

    python -c "from bench.decisions.estimation import run; print(run())"
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from healmesh import features, schema
from healmesh.data import DriftSpec, generate
from healmesh.policies.estimation import Calibrator, CheckOutcome, EstimationConfig, compare, estimate
from healmesh.training import TrainConfig, fit_xgboost, split

WINDOWS, WINDOW_ROWS = 20, 2_000
# The generator's covariate shift moves a feature for fraud and legitimate rows alike, so a strong
# shift also changes P(y|x) a little (amount x e^1: realised AUC 0.958 against 0.983 undrifted, while
# the calibrated probabilities say 0.977); the check may rightly flag some of those windows.
COVARIATE = {
    "cov amount x e^0.5": {"amount": 0.5},
    "cov amount x e^1": {"amount": 1.0},
    "cov distance_from_home +1": {"distance_from_home_km": 1.0},
    "cov merchant_risk +1 sd": {"merchant_risk_score": 1.0},
    "cov channel 30 % redrawn": {"channel": 0.3},
    "cov txn_count_1h +1 sd, hour +1 sd": {"txn_count_1h": 1.0, "hour": 1.0},
}
CONCEPT = {"concept drift 0.5": 0.5, "concept drift 1.0": 1.0}


def _windows(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[i * WINDOW_ROWS:(i + 1) * WINDOW_ROWS] for i in range(WINDOWS)]


def run() -> dict[str, Any]:
    started = time.monotonic()
    cfg = EstimationConfig()
    data = split(generate(60_000, seed=21), TrainConfig(seed=21))
    model, meta = fit_xgboost(data.train, data.val, 21)
    reference = pd.concat([data.val, data.holdout], ignore_index=True)
    label = schema.active().label
    cal = Calibrator.fit(reference[label].to_numpy(), model.predict_proba(features.encode_frame(reference)))
    cal = Calibrator.from_dict(cal.to_dict())  # as it would be stored with the reference data
    threshold = float(cal.apply(np.array([meta.threshold]))[0])

    scenarios: dict[str, DriftSpec] = {"no drift": DriftSpec()}
    scenarios |= {k: DriftSpec(covariate_shift=v) for k, v in COVARIATE.items()}
    scenarios |= {k: DriftSpec(concept_drift=v) for k, v in CONCEPT.items()}
    rows = []
    for i, (name, drift) in enumerate(scenarios.items()):
        frame = generate(WINDOWS * WINDOW_ROWS, seed=100 + i, drift=drift)
        errors, ests, reals, gaps, insufficient = [], [], [], 0, 0
        for w in _windows(frame):
            y = w[schema.active().label].to_numpy()
            probs = cal.apply(model.predict_proba(features.encode_frame(w)))
            est = estimate(probs, threshold)
            check = compare(est, y, probs, cfg)
            if check.outcome is CheckOutcome.INSUFFICIENT_LABELS or check.realised_auc is None:
                insufficient += 1
                continue
            ests.append(est.estimated_auc)
            reals.append(check.realised_auc)
            errors.append(abs(check.realised_auc - est.estimated_auc))
            gaps += check.outcome is CheckOutcome.GAP
        y_all = frame[schema.active().label].to_numpy()
        p_all = cal.apply(model.predict_proba(features.encode_frame(frame)))
        rows.append({"name": name, "est": float(np.mean(ests)), "real": float(np.mean(reals)),
                     "pooled_true": float(roc_auc_score(y_all, p_all)),
                     "pooled_est": estimate(p_all, threshold).estimated_auc,
                     "mae": float(np.mean(errors)), "gaps": gaps, "read": len(errors), "insufficient": insufficient})

    cov = [r for r in rows if r["name"].startswith("cov")]
    cov_mae = float(np.mean([r["mae"] for r in cov]))
    cov_pooled = float(np.mean([abs(r["pooled_est"] - r["pooled_true"]) for r in cov]))
    cov_false = sum(r["gaps"] for r in cov) + rows[0]["gaps"]
    cov_read = sum(r["read"] for r in cov) + rows[0]["read"]
    concept_full = next(r for r in rows if r["name"] == "concept drift 1.0")
    lines = [
        f"One XGBoost model (60,000 generated rows, seed 21); isotonic calibrator fitted on its validation and holdout "
        f"splits ({len(reference):,} rows). Per scenario {WINDOWS} windows of {WINDOW_ROWS:,} fresh rows (about 2 % "
        f"positive). Estimated AUC uses the calibrated probabilities only; realised AUC the window's labels; the "
        f"check flags GAP when |realised - estimated| > {cfg.z:.2f} x SE + {cfg.tolerance}. Pooled: all "
        f"{WINDOWS * WINDOW_ROWS:,} rows of the scenario at once (no sampling noise to speak of).", "",
        "| scenario | mean estimated AUC | mean realised AUC | per-window MAE | pooled est | pooled true | "
        "windows flagged GAP |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['est']:.4f} | {r['real']:.4f} | {r['mae']:.4f} | {r['pooled_est']:.4f} | "
              f"{r['pooled_true']:.4f} | {r['gaps']} of {r['read']}"
              + (f" ({r['insufficient']} too few labels)" if r["insufficient"] else "") + " |" for r in rows]
    lines += ["", f"run() took {time.monotonic() - started:.0f} s."]
    checks = [
        {"requirement": "estimated vs true AUC under covariate shift: mean absolute error <= 0.03 "
                        "(per 2,000-row window)",
         "measured": f"{cov_mae:.4f} per window; {cov_pooled:.4f} pooled", "met": cov_mae <= 0.03},
        {"requirement": "under concept drift the gap is flagged",
         "measured": f"{concept_full['gaps']} of {concept_full['read']} windows flagged at concept_drift=1.0",
         "met": concept_full["read"] > 0 and concept_full["gaps"] >= 0.95 * concept_full["read"]},
        {"requirement": "no false GAP flags without concept drift (no drift + covariate shift)",
         "measured": f"{cov_false} of {cov_read} windows", "met": cov_false <= 0.05 * cov_read},
    ]
    return {"title": "Performance estimated before labels arrive (CBPE)", "lines": lines, "checks": checks}


if __name__ == "__main__":
    out = run()
    print("\n".join(out["lines"]))
    for c in out["checks"]:
        print(c)
