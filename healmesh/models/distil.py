"""Fallback rules distilled from training data, for a project that writes none.

A shallow decision tree on the encoded features; each leaf becomes one rule (the conditions on
its path, merged per feature). Leaves are disjoint, so exactly one rule fires for a row and the
rule score ``sigmoid(bias + weight)`` is that leaf's smoothed positive rate: a calibrated,
readable score that needs no ML framework to serve (``healmesh.rules``).
"""

from __future__ import annotations

import math

import pandas as pd

from healmesh.evaluation import choose_threshold
from healmesh.project import ConditionSpec, FallbackSpec, RuleSpec
from healmesh.schema import Schema

# 4 levels: at most 16 rules of at most 4 conditions, which a person can still read. Fraud
# example, 40k rows, holdout AUC by depth 3/4/5: 0.761/0.797/0.828 (4/6/7 rules; the hand-written
# rules 0.847): 4 is the readable middle.
MAX_DEPTH = 4


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def distil(train: pd.DataFrame, schema: Schema, *, seed: int = 0, max_depth: int = MAX_DEPTH) -> FallbackSpec:
    """Rules from a validated, labelled frame (0/1 in ``schema.label``)."""
    from sklearn.tree import DecisionTreeClassifier

    enc = schema.encoder
    X = enc.encode_frame(train)
    y = train[schema.label].to_numpy(dtype=int)
    leaf_min = max(20, len(y) // 100)
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=leaf_min, random_state=seed).fit(X, y)
    t = tree.tree_
    base = (y.sum() + 1.0) / (len(y) + 2.0)
    bias = _logit(base)

    rules: list[RuleSpec] = []

    def walk(node: int, path: list[tuple[int, bool, float]]) -> None:
        if t.children_left[node] == -1:  # a leaf
            n = float(t.n_node_samples[node])
            # value holds class fractions (or counts, by sklearn version): normalise either way
            dist = t.value[node][0]
            positives = n * float(dist[1]) / float(dist.sum())
            p = (positives + 1.0) / (n + 2.0)
            conditions = _conditions(path, schema)
            rules.append(RuleSpec(
                name=f"leaf_{len(rules) + 1}", when=conditions, weight=_round(_logit(p) - bias),
                why=f"{int(n):,} training rows, {p:.1%} positive"))
            return
        feature, threshold = int(t.feature[node]), float(t.threshold[node])
        walk(int(t.children_left[node]), [*path, (feature, False, threshold)])
        walk(int(t.children_right[node]), [*path, (feature, True, threshold)])

    walk(0, [])
    if len(rules) == 1 and not rules[0].when:  # the tree found no split: one constant score
        rules = []
    spec = FallbackSpec(bias=_round(bias), threshold=0.5, rules=tuple(r for r in rules if r.when))
    from healmesh.rules import RuleSet

    scores = RuleSet.from_spec(spec).score_frame(train)
    threshold = min(0.99, max(0.01, choose_threshold(y, scores)))
    return spec.model_copy(update={"threshold": _round(threshold)})


def _conditions(path: list[tuple[int, bool, float]], schema: Schema) -> tuple[ConditionSpec, ...]:
    """A path's splits as conditions, one or two per feature: the tightest bounds of a numeric
    feature; for a category, ``==`` it, or ``not_in`` the categories ruled out."""
    enc = schema.encoder
    lower: dict[str, float] = {}
    upper: dict[str, float] = {}
    equal: dict[str, str] = {}
    excluded: dict[str, list[str]] = {}
    for column, right, threshold in path:
        name = enc.source_feature[column]
        if column < enc.n_numeric:
            if right:  # x > threshold
                lower[name] = max(lower.get(name, -math.inf), threshold)
            else:  # x <= threshold
                upper[name] = min(upper.get(name, math.inf), threshold)
        else:
            category = enc.encoded_names[column].split("=", 1)[1]
            if right:  # the one-hot column is 1
                equal[name] = category
            else:
                excluded.setdefault(name, []).append(category)
    out: list[ConditionSpec] = []
    for f in schema.features:
        if f.name in lower:
            out.append(ConditionSpec(feature=f.name, op=">", value=_round(lower[f.name])))
        if f.name in upper:
            out.append(ConditionSpec(feature=f.name, op="<=", value=_round(upper[f.name])))
        if f.name in equal:
            out.append(ConditionSpec(feature=f.name, op="==", value=equal[f.name]))
        elif f.name in excluded:
            cats = tuple(sorted(set(excluded[f.name])))
            out.append(ConditionSpec(feature=f.name, op="!=", value=cats[0]) if len(cats) == 1
                       else ConditionSpec(feature=f.name, op="not_in", value=cats))
    return tuple(out)


def holdout_auc(spec: FallbackSpec, holdout: pd.DataFrame, schema: Schema) -> float:
    from sklearn.metrics import roc_auc_score

    from healmesh.rules import RuleSet

    y = holdout[schema.label].to_numpy(dtype=int)
    return float(roc_auc_score(y, RuleSet.from_spec(spec).score_frame(holdout))) if 0 < y.sum() < len(y) else math.nan


