"""No name of the fraud example is hard-coded in the mesh's own code.

The mesh serves whatever project file it is given; the fraud example is one such file
(``examples/fraud/healmesh.yaml``). Its names must live there and in ``examples/fraud/`` only.

The rule, precisely:

* Names: every feature name, the label column, the entity key and every fallback rule name,
  read from ``examples/fraud/healmesh.yaml`` with PyYAML, and the word ``fraud``.
* Files: every ``.py`` file under ``healmesh/``, ``bentos/``, ``gateway/`` and ``dags/``.
* What is looked at (Python's ``tokenize``): each NAME token (an identifier or keyword) is one
  word; each STRING token (any string literal, f-strings, byte strings and docstrings included:
  a docstring is a STRING token) is split into words on every character that cannot be part of
  an identifier (``[A-Za-z0-9_]+`` are the words). COMMENT tokens are ignored, and so is
  everything else (numbers, operators).
* A hit, case-insensitively: a word equal to a name; a word containing a name that has an
  underscore in it (a compound such as ``txn_count_1h`` is unmistakable inside a longer word,
  a short one such as ``hour`` inside ``tm_hour`` is not); any word containing ``fraud``
  (``FraudModel``, ``is_fraud``, ``fraud_rate`` are all domain names).
* One exception by rule: ``fraud`` inside a STRING token of ``healmesh/project.py``, the module
  that names the default project file's path (``examples/fraud/healmesh.yaml``) and says so in
  its docstrings. A NAME containing ``fraud`` is a hit there too.
* One exception by list: ``ALLOWED`` below, (file, name) pairs where the word is a generic use
  that has nothing to do with the example, each with its reason. Every pair must still hit
  (a stale entry fails too), so the list cannot quietly outlive its reason.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fraud" / "healmesh.yaml"
SCANNED = ("healmesh", "bentos", "gateway", "dags")
DOMAIN_WORD = "fraud"
# the one file whose string literals may say "fraud": it names the default example's path
DOMAIN_WORD_IN_STRINGS = "healmesh/project.py"
WORD = re.compile(r"[A-Za-z0-9_]+")

# (file, name): a generic use of a word that happens to be a feature name of the example
ALLOWED = {
    # the covariate shift's size per feature (DriftSpec.covariate_shift: {feature: amount})
    ("healmesh/data/drift_spec.py", "amount"),
    # `--shift FEATURE=AMOUNT`: the parser's variable and its metavar/help text
    ("healmesh/ops/cli.py", "amount"),
    # the archive's hourly parts ("one hour each") in the archiver's docstring
    ("healmesh/lifecycle/archive.py", "hour"),
    # the archive's hourly partitions: the `hour=HH/` path segment and its docstrings
    ("healmesh/policies/archive.py", "hour"),
    # "until the first young-generation collection about an hour later" (a measurement)
    ("healmesh/registry.py", "hour"),
}


@dataclass(frozen=True)
class Hit:
    file: str
    line: int
    name: str
    word: str
    token: str  # "NAME" or "STRING"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.token} {self.word!r} (example name {self.name!r})"


def example_names() -> set[str]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    names = {f["name"] for f in raw["features"]} | {raw["label"]["column"], raw["entity_key"]}
    names |= {r["name"] for r in raw["fallback"]["rules"]}
    return {n.lower() for n in names}


def _matches(word: str, names: set[str]) -> str | None:
    w = word.lower()
    if DOMAIN_WORD in w:
        return DOMAIN_WORD
    if w in names:
        return w
    return next((n for n in sorted(names) if "_" in n and n in w), None)


def scan(path: Path, rel: str, names: set[str]) -> list[Hit]:
    hits = []
    # FSTRING_MIDDLE: Python 3.12+ tokenizes f-strings in parts (3.11 gives one STRING token)
    string_types = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NAME:
            kind = "NAME"
        elif tok.type in string_types:
            kind = "STRING"
        else:  # COMMENT tokens among them: ignored
            continue
        for m in WORD.finditer(tok.string):
            name = _matches(m.group(), names)
            if name is None:
                continue
            if kind == "STRING" and name == DOMAIN_WORD and rel == DOMAIN_WORD_IN_STRINGS:
                continue
            line = tok.start[0] + tok.string.count("\n", 0, m.start())
            hits.append(Hit(rel, line, name, m.group(), kind))
    return hits


def scanned_files() -> list[Path]:
    return [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]


@cache
def all_hits() -> tuple[Hit, ...]:
    names = example_names()
    return tuple(h for p in scanned_files() for h in scan(p, p.relative_to(ROOT).as_posix(), names))


def test_the_names_come_from_the_example_file():
    names = example_names()
    # 16 features, the label, the entity key, 15 rules: a broken read would make the test vacuous
    assert {"amount", "hour", "merchant_category", "is_fraud", "card_id", "impossible_travel"} <= names
    assert len(names) >= 30
    assert {p.relative_to(ROOT).parts[0] for p in scanned_files()} == set(SCANNED)


def test_the_scanner_finds_names_in_code_and_strings_but_not_in_comments(tmp_path):
    src = tmp_path / "sample.py"
    src.write_text(
        "# amount, fraud and card_id in a comment are fine\n"
        "def f(amount):\n"
        '    """Scores a Fraud case."""\n'
        '    return {"card_id": 1, "x": f"{amount}-geo"}, FraudModel, max_txn_count_1h_seen, tm_hour\n'
    )
    hits = scan(src, "healmesh/sample.py", example_names())
    assert {(h.line, h.word, h.token) for h in hits} == {
        (2, "amount", "NAME"), (3, "Fraud", "STRING"), (4, "card_id", "STRING"), (4, "amount", "STRING"),
        (4, "geo", "STRING"), (4, "FraudModel", "NAME"), (4, "max_txn_count_1h_seen", "NAME")}
    # project.py may name the example in its strings, not in its identifiers
    as_project = scan(src, DOMAIN_WORD_IN_STRINGS, example_names())
    assert {h.word for h in as_project if h.name == DOMAIN_WORD} == {"FraudModel"}
    # and the example's own generator is full of them (a control: the scanner sees real code)
    assert len(scan(EXAMPLE.parent / "generator.py", "examples/fraud/generator.py", example_names())) > 20


def test_no_example_name_in_the_mesh_code():
    hits = [h for h in all_hits() if (h.file, h.name) not in ALLOWED]
    assert not hits, "names of the fraud example in the mesh's code:\n" + "\n".join(map(str, hits))


@pytest.mark.parametrize("allowed", sorted(ALLOWED), ids="{0[0]}:{0[1]}".format)
def test_every_allowed_pair_is_still_used(allowed):
    assert allowed in {(h.file, h.name) for h in all_hits()}, f"stale entry in ALLOWED: {allowed}"
