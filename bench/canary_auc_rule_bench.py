"""How often the canary's old live-AUC rule (fail when the canary's AUC trails stable's by more
than ``max_auc_drop``; replaced by the sequential judge in issue 11, kept here to compare with)
fails a challenger that ranks as well as the champion. No servers: two
XGBoost models trained on generated data (the lifecycle-safety test's v1 and v2, seeds 11 and 12),
scored on fresh generated traffic; canary and stable samples drawn independently, as the stage
sees them. Writes bench/results/canary_auc_rule.{json,md}.

    python bench/canary_auc_rule_bench.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healmesh import features, schema  # noqa: E402
from healmesh.data import generate  # noqa: E402
from healmesh.policies.quality import live_auc  # noqa: E402
from healmesh.training import TrainConfig, fit_xgboost, split  # noqa: E402

SIZES = ((200, 200), (200, 400), (300, 300), (500, 500), (1_000, 1_000), (2_000, 2_000))
DRAWS = 2_000


class OldRule:
    """The rule as it was configured (the old ``CanaryConfig`` defaults)."""

    max_auc_drop = 0.03
    min_quality_labels = 200
    min_quality_positives = 5


def main() -> None:
    cfg = OldRule()
    models = []
    for seed in (11, 12):
        data = split(generate(20_000, seed=seed), TrainConfig(seed=seed))
        models.append(fit_xgboost(data.train, data.val, seed)[0])
    live = generate(200_000, seed=99)
    encoded, y = features.encode_frame(live), live[schema.active().label].to_numpy()
    stable_p, canary_p = models[0].predict_proba(encoded), models[1].predict_proba(encoded)
    rng = np.random.default_rng(0)
    rows = []
    for n_canary, n_stable in SIZES:
        read = failed = 0
        for _ in range(DRAWS):
            c = rng.choice(len(y), n_canary, replace=False)
            s = rng.choice(len(y), n_stable, replace=False)
            a = live_auc(y[c], canary_p[c], cfg.min_quality_labels, cfg.min_quality_positives)
            b = live_auc(y[s], stable_p[s], cfg.min_quality_labels, cfg.min_quality_positives)
            if a is None or b is None:
                continue
            read += 1
            failed += a < b - cfg.max_auc_drop
        rows.append({"canary_labels": n_canary, "stable_labels": n_stable, "draws": DRAWS, "rule_read": read,
                     "false_fail_rate": round(failed / read, 4) if read else None})
    result = {"positive_rate": round(float(y.mean()), 4), "stable_auc": round(float(roc_auc_score(y, stable_p)), 4),
              "canary_auc": round(float(roc_auc_score(y, canary_p)), 4), "max_auc_drop": cfg.max_auc_drop,
              "min_quality_labels": cfg.min_quality_labels, "min_quality_positives": cfg.min_quality_positives,
              "rows": rows}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "canary_auc_rule.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# The old canary live-AUC rule on an equal challenger (replaced by the sequential judge)", "",
             f"`python bench/canary_auc_rule_bench.py`. Two equally good models: AUC {result['stable_auc']} "
             f"(stable) and {result['canary_auc']} (canary) on 200,000 fresh rows, {result['positive_rate']:.1%} "
             f"positive. The rule fails the canary when its AUC trails by more than {cfg.max_auc_drop}; it is read "
             f"from {cfg.min_quality_labels} labels with {cfg.min_quality_positives} positives per variant. "
             "A stage reads it at every check, so a stage's false-fail rate is higher still.", "",
             "| canary labels | stable labels | draws where the rule was read | false fails |", "|---|---|---|---|"]
    lines += [f"| {r['canary_labels']} | {r['stable_labels']} | {r['rule_read']} of {r['draws']} | "
              f"{r['false_fail_rate']:.1%} |" for r in rows]
    (out / "canary_auc_rule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
