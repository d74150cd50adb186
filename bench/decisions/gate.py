"""Issue 11, item 6, the gate line: 200 equal and 200 worse (2 AUC points) candidates per holdout size, judged by
the paired DeLong gate (healmesh.policies.gate.gate_with_confidence) and by the old tolerance rule (candidate AUC
>= champion AUC - 0.005) on the same draws. Simulation with known truth: no models, no servers."""

from __future__ import annotations

import time

import numpy as np

from healmesh.policies.gate import GateConfig, GateOutcome, gate_with_confidence, paired_auc

SIZES = (300, 1_000, 3_000, 10_000)
RUNS = 200
RATE = 0.02
SHARED_NOISE = 0.3  # both models see the same latent risk plus their own noise: their AUCs are correlated
SLOPE, INTERCEPT = 3.0, -7.22  # on a N(0, 1) risk: about 2 % positives, champion AUC about 0.95 (as the fraud models)


def _draw(rng: np.random.Generator, n: int, candidate_noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels from a calibrated risk model p = sigmoid(INTERCEPT + SLOPE z); each model scores z plus its own noise
    (AUC depends only on ranks, so the scores need no calibration map)."""
    z = rng.normal(size=n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(INTERCEPT + SLOPE * z)))).astype(int)
    return labels, z + rng.normal(0, candidate_noise, n), z + rng.normal(0, SHARED_NOISE, n)


def _worse_noise(target_drop: float = 0.02) -> tuple[float, float, float]:
    """The candidate noise that costs ``target_drop`` AUC, by bisection on one large draw (population values)."""
    rng = np.random.default_rng(0)
    n = 400_000
    z = rng.normal(size=n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(INTERCEPT + SLOPE * z)))).astype(int)
    e = rng.normal(size=n)
    champion = z + SHARED_NOISE * rng.normal(size=n)
    base = paired_auc(labels, champion, champion).champion_auc
    lo, hi = SHARED_NOISE, 3.0
    for _ in range(30):
        mid = (lo + hi) / 2
        drop = base - paired_auc(labels, z + mid * e, champion).candidate_auc
        lo, hi = (mid, hi) if drop < target_drop else (lo, mid)
    return (lo + hi) / 2, base, float(labels.mean())


def run() -> dict:  # type: ignore[type-arg]
    from sklearn.metrics import roc_auc_score  # the AUC the retrain logs today

    t0 = time.perf_counter()
    cfg = GateConfig()  # the defaults the retrain runs with
    worse_noise, base_auc, rate = _worse_noise()
    lines = [
        f"Holdouts of {', '.join(f'{s:,}' for s in SIZES)} rows, {rate:.1%} positives (labels drawn from a calibrated "
        f"risk model); champion AUC {base_auc:.3f} (population). Both models score the same latent risk plus their own "
        f"noise (champion sd {SHARED_NOISE}); an equal candidate has the same noise, a worse one sd {worse_noise:.2f} "
        f"(2.0 AUC points worse). {RUNS} equal and {RUNS} worse candidates per size. New gate: {cfg.model_dump()}. "
        "Old rule: candidate AUC >= champion AUC - 0.005.",
        "",
        "| rows | mean positives | worse promoted: new | worse rejected: new | worse promoted: old | "
        "equal passed: new | equal insufficient: new | equal rejected: new | equal rejected: old |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst_new, worst_old = 0.0, 0.0
    for size in SIZES:
        rng = np.random.default_rng(size)
        counts = {k: 0 for k in ("wn", "wr", "wo", "ep", "ei", "er", "eo")}
        positives = 0
        for kind, noise in (("equal", SHARED_NOISE), ("worse", worse_noise)):
            for _ in range(RUNS):
                labels, cand, champ = _draw(rng, size, noise)
                positives += int(labels.sum())
                d = gate_with_confidence(labels, cand, champ, cfg)
                if 1 <= labels.sum() < size:
                    aucs = (float(roc_auc_score(labels, cand)), float(roc_auc_score(labels, champ)))
                    old = aucs[0] >= aucs[1] - 0.005
                else:
                    old = False  # one class only: the retrain could not even compute an AUC
                if kind == "worse":
                    counts["wn"] += d.outcome is GateOutcome.PASS
                    counts["wr"] += d.outcome is GateOutcome.REJECT
                    counts["wo"] += old
                else:
                    counts["ep"] += d.outcome is GateOutcome.PASS
                    counts["ei"] += d.outcome is GateOutcome.INSUFFICIENT_EVIDENCE
                    counts["er"] += d.outcome is GateOutcome.REJECT
                    counts["eo"] += not old
        pct = {k: 100.0 * v / RUNS for k, v in counts.items()}
        worst_new, worst_old = max(worst_new, pct["wn"]), max(worst_old, pct["wo"])
        cells = " | ".join(f"{pct[k]:.1f} %" for k in ("wn", "wr", "wo", "ep", "ei", "er", "eo"))
        lines.append(f"| {size:,} | {positives / (2 * RUNS):.1f} | {cells} |")
    lines += ["", f"Run time {time.perf_counter() - t0:.1f} s."]
    return {
        "title": "Retrain gate: paired DeLong test with a margin and a floor vs the old tolerance rule",
        "lines": lines,
        "checks": [
            {"requirement": "gate: worse (2 AUC points) candidates promoted <= 5 % at every holdout size",
             "measured": f"at most {worst_new:.1f} % (old rule: up to {worst_old:.1f} %)", "met": worst_new <= 5.0},
            {"requirement": "gate: equal candidates held back as insufficient evidence are reported",
             "measured": "see the table (equal insufficient / rejected per size)", "met": True},
        ],
    }


if __name__ == "__main__":
    out = run()
    print("\n".join([f"## {out['title']}", *out["lines"], ""]))
    for c in out["checks"]:
        print(f"- [{'x' if c['met'] else ' '}] {c['requirement']}: {c['measured']}")
