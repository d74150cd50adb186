"""Sequential canary judge (healmesh.policies.sequential) by simulation with known truth.

A rollout has two judged stages (canary at 10 %, then 50 % of traffic; 100 % is the promotion), each
with fresh evidence, read after every ``CHECK_EVERY`` requests (continuous monitoring, as the stage
does). Per call: errors Bernoulli (0.2 % both, or 20 % for the faulty canary), log latency normal
(sd 0.3, equal), a label for every call (2 % positives) and a calibrated score whose AUC is 0.97
(champion) or 0.95 (worse canary): binormal logits, separation sqrt(2) * Phi^-1(AUC).

To run 200 canaries x two stages x up to ``MAX_CANARY`` calls in seconds, the streams are simulated
as summaries per check: error counts binomial (exact), latency means normal (exact for normal logs),
and each variant's AUC estimate as AUC + a random walk of the per-call influence terms whose variance
is DeLong's, measured once on 400,000 simulated calls (the asymptotic law DeLong's test relies on).
"""

from __future__ import annotations

import math
import time
from statistics import NormalDist
from typing import Any

import numpy as np

from healmesh.policies.quality import auc_variance
from healmesh.policies.sequential import AucDiff, Evidence, JudgeConfig, MeanDiff, Outcome, Stream, judge

RUNS = 200
CHECK_EVERY = 1000  # requests (both variants) between two reads
STAGES = (0.10, 0.50)
MAX_CANARY = 150_000
POS = 0.02
LAT_SD = 0.3
BASE_ERR = 0.002
CFG = JudgeConfig(alpha=0.025, beta=0.05, max_canary_calls=MAX_CANARY)  # 2 stages x 0.025: <= 5 % per canary


def _sep(auc: float) -> float:
    return math.sqrt(2) * NormalDist().inv_cdf(auc)


def _per_call_auc_var(auc: float, rng: np.random.Generator, n: int = 400_000) -> float:
    """n x DeLong's variance: the variance of one call's influence on the AUC estimate."""
    y = rng.random(n) < POS
    s = rng.normal(0.0, 1.0, n) + _sep(auc) * y
    return n * auc_variance(y, s)


def _stage(rng: np.random.Generator, share: float, err: float, auc: float, auc_champion: float,
           sig2_all: dict[float, float], labelled: float) -> tuple[Outcome, int, str]:
    """One stage, read every CHECK_EVERY requests until decided: (outcome, requests, first reason).
    With a share ``labelled`` of calls labelled, the AUC's variance per call grows by 1 / labelled."""
    sig2 = {a: v / labelled for a, v in sig2_all.items()}
    nc_step = int(CHECK_EVERY * share)
    ns_step = CHECK_EVERY - nc_step
    checks = MAX_CANARY // nc_step + 1
    nc = nc_step * np.arange(1, checks + 1)
    ns = ns_step * np.arange(1, checks + 1)
    ec = np.cumsum(rng.binomial(nc_step, err, checks))
    es = np.cumsum(rng.binomial(ns_step, BASE_ERR, checks))
    lc = np.cumsum(rng.normal(0, LAT_SD * math.sqrt(nc_step), checks)) / nc
    ls = np.cumsum(rng.normal(0, LAT_SD * math.sqrt(ns_step), checks)) / ns
    ac = auc + np.cumsum(rng.normal(0, math.sqrt(sig2[auc] * nc_step), checks)) / nc
    as_ = auc_champion + np.cumsum(rng.normal(0, math.sqrt(sig2[auc_champion] * ns_step), checks)) / ns
    for i in range(checks):
        ev = Evidence(
            canary_calls=int(nc[i]), elapsed_s=0.0,
            error_rate=MeanDiff(Stream.bernoulli(int(nc[i]), int(ec[i])), Stream.bernoulli(int(ns[i]), int(es[i]))),
            latency=MeanDiff(Stream(int(nc[i]), float(lc[i]), LAT_SD**2), Stream(int(ns[i]), float(ls[i]), LAT_SD**2)),
            quality=AucDiff(float(ac[i]), sig2[auc] / nc[i], float(as_[i]), sig2[auc_champion] / ns[i],
                            int(nc[i] * labelled)))
        j = judge(ev, CFG)
        if j.outcome is not Outcome.CONTINUE:
            return j.outcome, int(nc[i] + ns[i]), j.reasons[0]
    raise AssertionError("the judge must decide by max_canary_calls")


def _canary(rng: np.random.Generator, err: float, auc: float, sig2: dict[float, float], labelled: float = 1.0
            ) -> tuple[str, int, list[int], str]:
    """A whole rollout: ('rollback@<stage>' or 'promoted', requests, per-stage requests, reason)."""
    spent: list[int] = []
    for k, share in enumerate(STAGES):
        outcome, n, reason = _stage(rng, share, err, auc, 0.97, sig2, labelled)
        spent.append(n)
        if outcome is Outcome.ROLLBACK:
            return f"rollback@{k}", sum(spent), spent, reason
    return "promoted", sum(spent), spent, ""


def _fixed_requests(share: float, sig2c: float, sig2s: float, gap: float) -> int:
    """Requests a fixed-length one-sided test needs at the same alpha/beta (per metric share) to tell
    a canary at the margin from one ``gap`` away: (z_a + z_b) * SE(n) = gap."""
    z = NormalDist().inv_cdf(1 - CFG.alpha / 3) + NormalDist().inv_cdf(1 - CFG.beta / 3)
    v_target = (gap / z) ** 2
    # V = sig2c / (share N) + sig2s / ((1 - share) N)
    return math.ceil((sig2c / share + sig2s / (1 - share)) / v_target)


def _real_scores_check(rng: np.random.Generator, auc: float, runs: int = 12, step: int = 25_000
                       ) -> tuple[list[str], float, float]:
    """Cross-check of the random-walk AUC: per-call scores and labels, sklearn's AUC and DeLong's
    variance at each read (every ``step`` requests, 50 % stage, AUC judged alone with error and
    latency equal and settled). Returns (outcomes, median requests) to compare with ``_stage``'s."""
    from sklearn.metrics import roc_auc_score

    outcomes, spent = [], []
    for _ in range(runs):
        n_max = 24 * step // 2
        yc, ys = rng.random(n_max) < POS, rng.random(n_max) < POS
        sc = rng.normal(0.0, 1.0, n_max) + _sep(auc) * yc
        ss = rng.normal(0.0, 1.0, n_max) + _sep(0.97) * ys
        settled = MeanDiff(Stream(1, 0.0, 0.0), Stream(1, 0.0, 0.0))
        for k in range(1, 25):
            n = k * step // 2
            settled = MeanDiff(Stream(n, 0.0, LAT_SD**2), Stream(n, 0.0, LAT_SD**2))
            q = AucDiff(float(roc_auc_score(yc[:n], sc[:n])), auc_variance(yc[:n], sc[:n]),
                        float(roc_auc_score(ys[:n], ss[:n])), auc_variance(ys[:n], ss[:n]), n)
            j = judge(Evidence(n, 0.0, MeanDiff(Stream.bernoulli(n, 0), Stream.bernoulli(n, 0)), settled, q), CFG)
            if j.outcome is not Outcome.CONTINUE:
                break
        outcomes.append(j.outcome.value)
        spent.append(2 * n)
    sim = [_stage(rng, 0.5, BASE_ERR, auc, 0.97, {a: _per_call_auc_var(a, rng, 100_000) for a in (auc, 0.97)}, 1.0)
           for _ in range(50)]
    return outcomes, float(np.median(spent)), float(np.median([n for _, n, _ in sim]))


def run() -> dict[str, Any]:
    t0 = time.perf_counter()
    rng = np.random.default_rng(20261201)
    sig2 = {a: _per_call_auc_var(a, rng) for a in (0.97, 0.95)}
    cases = {"equal": (BASE_ERR, 0.97, 1.0), "2 AUC points worse": (BASE_ERR, 0.95, 1.0),
             "20 % errors": (0.20, 0.97, 1.0), "equal, 25 % labelled": (BASE_ERR, 0.97, 0.25),
             "2 AUC points worse, 25 % labelled": (BASE_ERR, 0.95, 0.25)}
    results: dict[str, list[tuple[str, int, list[int], str]]] = {}
    for name, (err, auc, lab) in cases.items():
        results[name] = [_canary(rng, err, auc, sig2, lab) for _ in range(RUNS)]

    def share(name: str, pred: str) -> float:
        rs = results[name]
        return sum(r[0].startswith(pred) for r in rs) / len(rs)

    m = CFG.auc_margin
    fixed_pass = _fixed_requests(STAGES[0], sig2[0.97], sig2[0.97], m)  # truth 0, margin m
    fixed_fail = _fixed_requests(STAGES[0], sig2[0.95], sig2[0.97], 0.02 - m)  # truth 0.02, margin m
    med = {k: float(np.median([r[2][0] for r in v])) for k, v in results.items()}
    lines = [
        f"Two judged stages (10 %, 50 %), read every {CHECK_EVERY} requests; alpha {CFG.alpha} per stage "
        f"(false rollback), beta {CFG.beta} (false pass), margins: error rate {CFG.error_margin}, latency ratio "
        f"{math.exp(CFG.latency_margin):.2f}, AUC {CFG.auc_margin}; labels for every call, {POS:.0%} positives; "
        f"at most {MAX_CANARY:,} canary calls a stage. DeLong per-call variance: AUC 0.97 {sig2[0.97]:.4f}, "
        f"0.95 {sig2[0.95]:.4f}.",
        "",
        "| canaries | runs | promoted | rolled back at 10 % | at 50 % | median requests, stage 10 % "
        "| median requests, whole rollout |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        lines.append(f"| {name} | {len(rs)} | {share(name, 'promoted'):.1%} | {share(name, 'rollback@0'):.1%} | "
                     f"{share(name, 'rollback@1'):.1%} | {med[name]:,.0f} | "
                     f"{float(np.median([r[1] for r in rs])):,.0f} |")
    limit = {k: sum("too little evidence" in r[3] for r in v) for k, v in results.items()}
    lines += ["",
              f"Fixed-length test at 10 % (same alpha/beta split over 3 metrics, one-sided): {fixed_pass:,} requests "
              f"to separate AUC drop 0 from the margin, {fixed_fail:,} to separate 0.02 from it; "
              "rollbacks for too little evidence at the limit: " + "; ".join(f"{k} {v}" for k, v in limit.items())
              + ".",
              ""]
    for auc in (0.97, 0.95):
        outs, real_med, sim_med = _real_scores_check(rng, auc)
        lines.append(f"Cross-check, canary AUC {auc}, 50 % stage, AUC judged from per-call scores with DeLong's "
                     f"variance (12 runs, read every 25,000 requests): {', '.join(sorted(set(outs)))} after a median "
                     f"{real_med:,.0f} requests; the random-walk simulation: {sim_med:,.0f} (50 runs, every 1,000).")
    lines += ["", f"Simulated in {time.perf_counter() - t0:.0f}s."]
    fr, rb, err_first = share("equal", "rollback"), share("2 AUC points worse", "rollback"), share("20 % errors",
                                                                                                "rollback@0")
    err_n = [r[2][0] for r in results["20 % errors"]]
    checks = [
        {"requirement": "200 equal canaries: false rollbacks <= 5 %", "measured": f"{fr:.1%}", "met": fr <= 0.05},
        {"requirement": "200 canaries 2 AUC points worse: rolled back >= 95 %", "measured": f"{rb:.1%}",
         "met": rb >= 0.95},
        {"requirement": "20 % errors: rolled back at the first stage every time",
         "measured": f"{err_first:.0%}, median {np.median(err_n):,.0f} requests (max {max(err_n):,})",
         "met": err_first == 1.0},
        {"requirement": "median requests to a decision vs a fixed-length test (stage 10 %)",
         "measured": f"equal {med['equal']:,.0f} vs fixed {fixed_pass:,}; worse {med['2 AUC points worse']:,.0f} "
                     f"vs fixed {fixed_fail:,}",
         "met": med["equal"] <= fixed_pass and med["2 AUC points worse"] <= fixed_fail},
    ]
    return {"title": "Sequential canary judge", "lines": lines, "checks": checks}


if __name__ == "__main__":
    out = run()
    print("#", out["title"])
    print("\n".join(out["lines"]))
    for c in out["checks"]:
        print(("MET  " if c["met"] else "MISS ") + c["requirement"] + ": " + c["measured"])
