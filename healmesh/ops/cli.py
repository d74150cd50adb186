"""The `healmesh` command line. Progress bars go to stderr; data goes to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _parse_shift(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, amount = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--shift takes FEATURE=AMOUNT, got {item!r}")
        out[name] = float(amount)
    return out


def _drift(args: argparse.Namespace):  # -> DriftSpec
    from healmesh.data import DriftSpec

    return DriftSpec(covariate_shift=_parse_shift(args.shift), concept_drift=args.concept_drift)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positive-rate", type=float, default=None,
                   help="share of positive rows (the generator's own default without it)")
    p.add_argument("--shift", action="append", default=[], metavar="FEATURE=AMOUNT",
                   help="covariate shift (repeatable): numeric skewed features are multiplied by exp(AMOUNT), "
                        "others moved by AMOUNT standard deviations; categorical: share of rows redrawn")
    p.add_argument("--concept-drift", type=float, default=0.0,
                   help="share of positives from patterns the training data never showed (0-1)")


def _generated(args: argparse.Namespace) -> Any:
    """Rows from the project's generator (a project with a data file has none: replay instead)."""
    from healmesh.data import generate

    options = {} if args.positive_rate is None else {"positive_rate": args.positive_rate}
    return generate(args.n, seed=args.seed, drift=_drift(args), **options)


def _json_value(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def cmd_sample(args: argparse.Namespace) -> int:
    from healmesh import schema

    frame = _generated(args)
    s = schema.active()
    columns = list(s.feature_names) + ([s.entity_key] if s.entity_key else []) + ([s.label] if args.with_label else [])
    out = sys.stdout
    for rec in tqdm(frame[columns].to_dict("records"), desc="sample", unit="tx", file=sys.stderr,
                    disable=args.n < 10_000):
        out.write(json.dumps({k: _json_value(v) for k, v in rec.items()}) + "\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from healmesh import schema

    frame = _generated(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    label = schema.active().label
    print(f"wrote {len(frame)} rows ({frame[label].mean():.2%} positive) to {out}", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from healmesh import schema

    if args.json:
        print(json.dumps(schema.active().describe(), indent=2))
        return 0
    for f in schema.active().describe():
        kind = f["type"]
        domain = ", ".join(f["values"]) if kind == "categorical" else f"{f['min']:g} to {f['max']:g} {f['unit']}"
        print(f"{f['name']:<28} {kind:<12} {domain}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from healmesh.ops import init_project

    return init_project.run(data=args.data, label=args.label, out=args.out, positive=args.positive,
                            entity_key=args.entity_key, name=args.name, force=args.force)


def _train_with_bar(desc: str, first_model: str, frame_of: Any, config: Any) -> dict[str, Any]:
    """`train` and `import-model`: the data (``frame_of()``), then training with a step bar; the report."""
    from healmesh.settings import get_settings
    from healmesh.training import format_report, train

    steps = ["data", "split", f"{first_model} xgboost", "fit mlp", "evaluate", "log xgboost to mlflow",
             "save xgboost to bentoml", "log mlp to mlflow", "save mlp to bentoml"]
    with tqdm(total=len(steps), desc=desc, unit="step", file=sys.stderr) as bar:
        def progress(step: str) -> None:
            bar.set_postfix_str(step)
            bar.update(1)

        progress("data")
        report = train(frame_of(), get_settings(), config, progress=progress).to_dict()
        bar.update(bar.total - bar.n)
    print(format_report(report))
    return report


def _project_frame(data: str | None, seed: int = 0) -> Any:
    """``--data`` (a CSV or Parquet with the project's features and label), else the project's own."""
    from healmesh import project
    from healmesh.data import load_transactions
    from healmesh.data.files import training_frame

    return load_transactions(data, require_label=True) if data else training_frame(project.active(), seed=seed)


def cmd_train(args: argparse.Namespace) -> int:
    from healmesh.training import TrainConfig

    generated = args.data is None and (args.n is not None or any((args.shift, args.concept_drift,
                                                                   args.positive_rate)))
    config = TrainConfig(seed=args.seed, register=not args.no_register, promote=args.promote,
                         tags={"healmesh.trigger": "cli"})
    report = _train_with_bar("train", "fit", lambda: _generated(args) if generated
                             else _project_frame(args.data, args.seed), config)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    from healmesh.training import TrainConfig

    # train() tags the run import and promotes both models
    _train_with_bar("import", "import", lambda: _project_frame(args.data),
                    TrainConfig(xgboost_model=Path(args.xgboost)))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from healmesh.ops import stack
    from healmesh.ops.cluster import Profile

    return stack.up(train_rows=args.n, airflow=not args.no_airflow, profile=Profile(args.profile))


def cmd_down(args: argparse.Namespace) -> int:
    from healmesh.ops import stack

    return stack.down()


def cmd_status(args: argparse.Namespace) -> int:
    from healmesh.ops import stack

    return stack.status(as_json=args.json)


def cmd_rollback(args: argparse.Namespace) -> int:
    from healmesh.lifecycle.airflow_tasks import mesh_client, redis_client
    from healmesh.lifecycle.rollout import RolloutFailed, manual_rollback
    from healmesh.settings import get_settings

    try:
        out = manual_rollback(get_settings(), mesh_client(), redis_client(), args.to)
    except RolloutFailed as exc:
        print(f"healmesh rollback: {exc}", file=sys.stderr)
        return 2
    print(f"champion: v{out['previous']} -> v{out['champion']}")
    return 0


def cmd_rollout_abort(args: argparse.Namespace) -> int:
    import getpass

    from healmesh.credentials import admin_token
    from healmesh.lifecycle.airflow_tasks import redis_client
    from healmesh.lifecycle.mesh import MeshClient
    from healmesh.lifecycle.rollout import RolloutFailed, abort
    from healmesh.settings import get_settings

    settings, who = get_settings(), f"cli:{getpass.getuser()}"
    try:
        out = abort(settings, MeshClient(settings, admin_token(settings), actor=who), redis_client(), args.why, who)
    except RolloutFailed as exc:
        print(f"healmesh rollout abort: {exc}", file=sys.stderr)
        return 2
    print(f"rollout of v{out['rolled_back']} aborted and rolled back; champion v{out['champion']}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    """Copy the feature log and the labels from Redis to the archive: once, or every
    ``archive.interval_s`` until interrupted (what `healmesh up` supervises)."""
    import contextlib
    import json
    import logging

    from healmesh import redis_conn
    from healmesh.lifecycle import archive
    from healmesh.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    redis = redis_conn.sync_client(settings)
    if args.archive == "once":
        store = archive.open_archive(settings)
        if store is None:
            print("the archive is off (HEALMESH_ARCHIVE__ENABLED=false)")
            return 1
        run = archive.archiver(settings, redis, store).run_once()
        print(json.dumps({"store": store.url, **run.describe()}))
        return 0 if run.took_lease else 1
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the loop between runs or within one
        archive.run_forever(settings, redis)
    return 0


def cmd_demo_all(args: argparse.Namespace) -> int:
    from healmesh.ops import narrated_demo

    return narrated_demo.run(out=Path(args.out) if args.out else None, steady_s=args.steady)


def cmd_demo_drift(args: argparse.Namespace) -> int:
    from healmesh.ops import demo
    from healmesh.ops.replay import parse_rows

    return demo.run(kind=args.kind, n=args.n, timeout_s=args.timeout, data=args.data,
                    rows=parse_rows(args.rows) if args.rows else None)


def cmd_replay(args: argparse.Namespace) -> int:
    from healmesh.ops import replay

    return replay.command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healmesh",
                                     description="A self-healing ML serving mesh for tabular binary classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="print N valid rows from the project's generator as JSON lines (ready to POST)")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--with-label", action="store_true", help="include the label column")
    _add_data_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("generate", help="write a labelled data set (CSV or Parquet)")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--out", required=True)
    _add_data_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("schema", help="show the feature schema")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("init", help="write a draft project file from a data file (check its guesses)")
    p.add_argument("--data", required=True, help="a CSV or Parquet file (or pkg:<package>/<file>)")
    p.add_argument("--label", required=True, help="the label column (exactly two distinct values)")
    p.add_argument("--out", default="healmesh.yaml", help="the project file to write (default healmesh.yaml)")
    p.add_argument("--positive", help="the label's positive class (default: 1/true/yes, else the rarer value)")
    p.add_argument("--entity-key", help="a column for sticky routing, not a feature")
    p.add_argument("--name", help="the project name (default: from the data file's name)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("train", help="train XGBoost and the MLP, log and register them")
    p.add_argument("--n", type=int, default=None,
                   help="rows from the project's generator (default: the project's data: its file, or its "
                        "generator's data.generated_rows)")
    p.add_argument("--data", help="a CSV or Parquet with the project's features and label (else the project's data)")
    p.add_argument("--no-register", action="store_true", help="skip MLflow (still saves to the BentoML store)")
    p.add_argument("--promote", action="store_true", help="move `champion` to the new versions")
    p.add_argument("--report", help="also write the report as JSON here")
    _add_data_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import-model", help="register an XGBoost model trained elsewhere as champion (the MLP "
                                            "is trained beside it)")
    p.add_argument("--xgboost", required=True, metavar="FILE",
                   help="a booster saved with save_model (.json or .ubj), binary:logistic, on the project's "
                        "encoded columns (numeric features, then one `feature=category` column per category)")
    p.add_argument("--data", metavar="FILE",
                   help="a CSV or Parquet with the project's features and label, for the threshold, calibration "
                        "and holdout metrics and the MLP (else the project's data)")
    p.set_defaults(func=cmd_import_model)

    p = sub.add_parser("up", help="train if needed and start the scorers in the background")
    p.add_argument("--n", type=int, default=None,
                   help="rows from a generated project's generator when there is no model yet "
                        "(default: its data.generated_rows)")
    p.add_argument("--no-airflow", action="store_true", help="skip Airflow (the serving mesh only)")
    p.add_argument("--profile", choices=["local", "cluster"], default="local",
                   help="cluster: the rehearsal of a cluster on this machine (PostgreSQL, Airflow on Celery, "
                        "two gateways behind HAProxy, every part in a home of its own)")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_down)
    p = sub.add_parser("rollback", help="move `champion` back to the previous version")
    p.add_argument("--to", help="a version number (default: the previous champion)")
    p.set_defaults(func=cmd_rollback)
    rollout = sub.add_parser("rollout", help="the running canary rollout").add_subparsers(dest="rollout", required=True)
    p = rollout.add_parser("abort", help="roll the running rollout back now and free the rollout lease")
    p.add_argument("--why", required=True,
                   help="the reason, recorded in the event, the audit trail and the rollout note")
    p.set_defaults(func=cmd_rollout_abort)
    archive = sub.add_parser("archive", help="the durable feature log: Redis streams -> Parquet parts").add_subparsers(
        dest="archive", required=True)
    archive.add_parser("once", help="archive what is new, once (JSON summary)").set_defaults(func=cmd_archive)
    archive.add_parser("run", help="archive every HEALMESH_ARCHIVE__INTERVAL_S until stopped").set_defaults(
        func=cmd_archive)
    demo_parser = sub.add_parser("demo", help="the narrated demo (or `demo drift`) on a running `make up`")
    demo_parser.add_argument("--out", help="results folder (default results/demo-<UTC time>)")
    demo_parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady traffic first")
    demo_parser.set_defaults(func=cmd_demo_all)
    demo = demo_parser.add_subparsers(dest="demo")
    p = demo.add_parser("drift", help="drift -> report -> retrain -> register -> canary -> promote, via Airflow")
    p.add_argument("--kind", default="concept", help="a drift scenario of the project's generator")
    p.add_argument("--n", type=int, default=20_000, help="drifted (or replayed) rows before the check")
    p.add_argument("--data", help="replay this file instead of generating (default for a project with a data "
                                  "file: its rows after the training rows)")
    p.add_argument("--rows", metavar="START:STOP", help="rows [START, STOP) of --data, from 0")
    p.add_argument("--timeout", type=float, default=1_200.0, help="seconds to wait for the whole loop")
    p.set_defaults(func=cmd_demo_drift)
    p = sub.add_parser("replay", help="post your own later data through the local gateway, then its labels")
    p.add_argument("--data", required=True, help="a CSV or Parquet with the project's features and label")
    p.add_argument("--rows", metavar="START:STOP", help="rows [START, STOP) of the file, from 0 (default: all)")
    p.add_argument("--rate", type=float, help="rows per second (default: as fast as the gateway answers)")
    p.add_argument("--labels-after", type=float, default=0.0, metavar="SECONDS",
                   help="send each row's label this long after its answer (default 0)")
    p.add_argument("--batch", type=int, default=1, metavar="K", help="rows per request (default 1)")
    p.add_argument("--limit", type=int, help="send at most N rows")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    p.add_argument("--gateway", help="the gateway's URL, on this machine (default: the local gateway)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("status", help="what runs and what it serves")
    p.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    p.set_defaults(func=cmd_status)
    return parser


def _unreachable(exc: BaseException) -> str | None:
    """One line for a part of the mesh that did not answer (a command run with the mesh down),
    naming it and what starts it; None for any other error."""
    import httpx
    import redis

    from healmesh import redis_conn
    from healmesh.settings import get_settings

    settings = get_settings()
    start = "is the mesh up? start it with `make up` (or `healmesh up`); `healmesh status` shows what runs"
    if isinstance(exc, httpx.TransportError):
        try:
            url = exc.request.url
        except RuntimeError:  # no request attached
            return f"a part of the mesh did not answer ({type(exc).__name__}): {start}"
        parts = {settings.gateway_port: "the gateway", settings.xgb_port: "the XGBoost scorer",
                 settings.torch_port: "the PyTorch scorer", settings.fallback_port: "the fallback scorer",
                 settings.airflow_port: "Airflow's API server", settings.mlflow_port: "MLflow"}
        part = parts.get(url.port or 0, "a server")
        return f"{part} at {url.scheme}://{url.host}:{url.port} did not answer ({type(exc).__name__}): {start}"
    if isinstance(exc, redis.ConnectionError):
        return f"Redis at {redis_conn.public_url(settings)} did not answer: {start}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"healmesh {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = _unreachable(exc)
        if line is None:
            raise
        print(f"healmesh {args.command}: {line}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
