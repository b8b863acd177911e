"""The ``tandem`` command line (README.md, "Command line"). Exit status 0 on success;
otherwise non-zero with a one-line reason on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from service.config import Settings

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

CLI_ACTOR_NAME = "cli"


def fail(message: str, code: int = 1) -> None:
    click.echo(f"tandem: {message}", err=True)
    sys.exit(code)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any failure into one line on stderr and a non-zero exit (no tracebacks)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from service.errors import ServiceError

        try:
            return func(*args, **kwargs)
        except ServiceError as exc:
            detail = f" ({json.dumps(exc.details)})" if exc.details else ""
            fail(f"{exc.message}{detail}", 2 if exc.status in (400, 404, 409, 422) else 1)
        except (click.ClickException, click.exceptions.Exit, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # one line, never a traceback, for operators and scripts
            fail(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise AssertionError("unreachable")

    return wrapper


def make_app(**overrides: Any) -> Any:
    from tandem.app import create_app

    return create_app(Settings.from_env(), **overrides)


def cli_actor() -> Any:
    from service.services.audit import Actor

    user = os.environ.get("USER") or "operator"
    return Actor(kind="system", id=None, name=f"{CLI_ACTOR_NAME}:{user}", role="admin")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tandem: route confident cases, queue the rest for people, learn, automate what is
    proved safe. Configuration comes from DATABASE_URL, REDIS_URL, TANDEM_HOME, SECRET_KEY."""


# --- database ----------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Migrate the database to the latest schema (safe to run repeatedly)."""
    from service import migrate
    from service.db import make_engine

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine, revision)
    click.echo(f"database at {migrate.current_revision(engine)}", err=True)


# --- accounts ------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """API tokens for applications and scripts."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["app", "reviewer", "analyst", "admin"]))
@click.option("--task", "tasks", multiple=True, help="Limit the token to this task (repeatable).")
@click.option("--name", default=None, help="A label to recognise the token by.")
@click.option(
    "--user",
    "user_email",
    default=None,
    help="Act for this UI user (needed to claim and review cases over the API).",
)
@friendly_errors
def token_create(
    role: str, tasks: tuple[str, ...], name: str | None, user_email: str | None
) -> None:
    """Create a token and print it, alone, on stdout (it is shown once, stored hashed)."""
    from service.services.accounts import create_token
    from service.uow import unit_of_work

    app = make_app()
    with app.app_context(), unit_of_work() as session:
        new = create_token(
            session,
            role=role,
            name=name or f"{role}-token",
            task_scope=list(tasks) or None,
            actor=cli_actor(),
            user_email=user_email,
        )
    click.echo(new.token)


@main.group()
def user() -> None:
    """People who log in to the review UI."""


@user.command("create")
@click.argument("email")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["reviewer", "analyst", "admin"]),
    help="An application gets a token instead: tandem token create --role app.",
)
@click.option("--task", "tasks", multiple=True, help="Limit the user to this task (repeatable).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@friendly_errors
def user_create(email: str, role: str, tasks: tuple[str, ...], password_stdin: bool) -> None:
    """Create a UI user. Without --password-stdin you are prompted (input hidden)."""
    from service.services.accounts import create_user
    from service.uow import unit_of_work

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    app = make_app()
    with app.app_context(), unit_of_work() as session:
        created = create_user(
            session,
            email=email,
            password=password,
            role=role,
            task_scope=list(tasks) or None,
            actor=cli_actor(),
        )
        click.echo(f"created user {created.email} ({created.role})", err=True)


@user.command("deactivate")
@click.argument("email")
@friendly_errors
def user_deactivate(email: str) -> None:
    """Stop EMAIL signing in; their sessions and tokens end at once."""
    _user_change(email, "deactivate")


@user.command("reactivate")
@click.argument("email")
@friendly_errors
def user_reactivate(email: str) -> None:
    """Let a deactivated user sign in again (revoked tokens stay revoked)."""
    _user_change(email, "reactivate")


@user.command("reset-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@friendly_errors
def user_reset_password(email: str, password_stdin: bool) -> None:
    """Set a new password for EMAIL; every session and token of that user ends."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    _user_change(email, "reset", password)


def _user_change(email: str, change: str, password: str = "") -> None:
    from service.services import accounts
    from service.uow import unit_of_work

    app = make_app()
    with app.app_context(), unit_of_work() as session:
        target = accounts.find_user(session, cli_actor(), email=email)
        if change == "deactivate":
            accounts.deactivate_user(session, target, cli_actor())
        elif change == "reactivate":
            accounts.reactivate_user(session, target, cli_actor())
        else:
            accounts.reset_password(session, target, password, cli_actor())
        click.echo(f"{change}: {target.email}", err=True)


# --- tasks -------------------------------------------------------------------------------


@main.group()
def task() -> None:
    """Task definitions."""


@task.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@friendly_errors
def task_create(file: Path) -> None:
    """Create a task from the task definition in FILE, a JSON file.

    Every key, its default and allowed range: docs/tasks.md ("Defining a task"); a complete
    example to start from: docs/examples/task.json. Prints the task's name on stdout.
    """
    from service.schemas.common import load
    from service.schemas.tasks import TaskCreateSchema
    from service.services.tasks import create_task
    from service.text_check import ensure_valid_text
    from service.uow import unit_of_work

    try:
        definition = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{file} is not valid JSON: {exc}", 2)
    ensure_valid_text(definition)
    data = load(TaskCreateSchema(), definition)
    app = make_app()
    with app.app_context(), unit_of_work() as session:
        created = create_task(session, data, cli_actor())
        click.echo(f"created task {created.name}", err=True)
    click.echo(created.name)


# --- export --------------------------------------------------------------------------------


@main.command("export")
@click.argument("task_name", metavar="TASK")
@click.option("--format", "fmt", required=True, type=click.Choice(["csv", "jsonl", "parquet"]))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="The file to write; '-' writes to standard output.",
)
@click.option("--from", "created_from", default=None, help="created_at >= (ISO 8601).")
@click.option("--to", "created_to", default=None, help="created_at < (ISO 8601).")
@click.option("--label-source", multiple=True, help="reviewer, application or model (repeatable).")
@click.option("--route", multiple=True, help="auto or review (repeatable).")
@click.option("--reason", multiple=True, help="confident, low_confidence, audit, ... (repeatable).")
@click.option("--status", multiple=True, help="auto, pending, in_review, resolved, corrected "
              "(repeatable).")  # fmt: skip
@click.option("--final-label", multiple=True, help="One of the task's labels (repeatable).")
@click.option("--audit", default=None, help="true or false.")
@click.option("--agreement", default=None, help="agree or disagree (human vs model).")
@click.option("--model-version", multiple=True, help="Model version number (repeatable).")
@click.option("--reviewer", multiple=True, help="Reviewer pseudonym (repeatable).")
@click.option(
    "--identity",
    default="pseudonym",
    show_default=True,
    type=click.Choice(["pseudonym", "real"]),
    help="'real' writes reviewer e-mail addresses instead of pseudonyms.",
)
@friendly_errors
def export_cmd(
    task_name: str, fmt: str, out: Path, identity: str, **filters: str | tuple[str, ...] | None
) -> None:
    """Write a feedback dataset (same bytes as the API) and print its manifest to stderr.
    With ``--out -`` the file goes to standard output and nothing else does."""
    from service.services import export as export_service
    from service.services.tasks import get_task
    from service.uow import unit_of_work

    raw = {"from": filters.pop("created_from"), "to": filters.pop("created_to"), **filters}
    params = {k: v for k, v in raw.items() if v is not None and v != ()}
    app = make_app()
    with app.app_context(), unit_of_work() as session:
        row = get_task(session, task_name)
        spec = export_service.parse_request(
            {**params, "format": fmt, "identity": identity}, cli_actor(), session, task=row
        )
        if str(out) == "-":
            # The bytes alone, unencoded; every message (the manifest too) goes to stderr.
            stdout = sys.stdout.buffer
            manifest = export_service.export_to_stream(session, row, spec, stdout, cli_actor())
        else:
            manifest = export_service.export_to_file(session, row, spec, out, cli_actor())
    click.echo(json.dumps(manifest, indent=2, sort_keys=True), err=True)


# --- processes -----------------------------------------------------------------------------


VERBOSE = click.option(
    "--verbose",
    is_flag=True,
    help="Embedded mode: print the full JSON logs here too (they are always written to "
    "TANDEM_HOME/logs/tandem.log). TANDEM_LOG_LEVEL=DEBUG|INFO|... does the same.",
)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    "web_workers",
    default=None,
    type=click.IntRange(min=1),
    help="Web worker processes (default: WEB_CONCURRENCY, else 1 embedded, 2 otherwise).",
)
@VERBOSE
@friendly_errors
def serve(host: str, port: int, web_workers: int | None, verbose: bool) -> None:
    """Run the web app; in embedded mode also the embedded Redis and one RQ worker."""
    from tandem.processes import serve as run_serve

    _set_verbose(verbose)
    run_serve(host=host, port=port, web_workers=web_workers)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@VERBOSE
@friendly_errors
def demo(host: str, port: int, verbose: bool) -> None:
    """`serve` plus a demo task, demo users and seeded history; prints URL and logins."""
    from tandem.processes import serve as run_serve

    _set_verbose(verbose)
    run_serve(host=host, port=port, web_workers=None, demo=True)


def _set_verbose(verbose: bool) -> None:
    # Through the environment, so the worker process that serve starts inherits it.
    if verbose:
        os.environ["TANDEM_VERBOSE"] = "1"


@main.command()
@click.option("--queues", default=None, help="Comma-separated queue names (default: all).")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option(
    "--with-scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run the periodic jobs (at most one scheduler is active at a time).",
)
@friendly_errors
def worker(queues: str | None, burst: bool, with_scheduler: bool) -> None:
    """Run an RQ worker through the app (any number, on any machine reaching Redis and DB)."""
    from workers.runner import run_worker

    names = [q.strip() for q in queues.split(",")] if queues else None
    run_worker(make_app(), names, burst=burst, with_scheduler=with_scheduler)


@main.command("train")
@click.argument("task_name", metavar="TASK")
@click.option("--wait", is_flag=True, help="Wait for the job; exit non-zero if it fails.")
@click.option("--timeout", default=3600, show_default=True, type=int, help="Seconds to wait.")
@friendly_errors
def train(task_name: str, wait: bool, timeout: int) -> None:
    """Queue training for TASK now (one job per task) and print the job id."""
    import time

    from service.models import Job
    from service.services.tasks import get_task
    from service.services.training import request_training
    from service.uow import unit_of_work

    app = make_app()
    with app.app_context():
        with unit_of_work() as session:
            task_row = get_task(session, task_name)
            job_id = request_training(session, task_row, cli_actor(), reason="on_demand").id
        click.echo(job_id)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            with unit_of_work() as session:
                job_row = session.get(Job, job_id, populate_existing=True)
                state = job_row.state if job_row else "missing"
                result, error = (job_row.result, job_row.error) if job_row else (None, None)
            if state == "finished":
                click.echo(json.dumps(result), err=True)
                return
            if state in ("failed", "missing"):
                fail(f"training job {job_id} {state}: {error}")
            if time.monotonic() > deadline:
                fail(f"training job {job_id} still {state} after {timeout}s")
            time.sleep(1.0)


# --- backtest ------------------------------------------------------------------------------


@main.command("simulate")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label", required=True, help="Column holding the true label.")
@click.option(
    "--task",
    "task_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Task definition JSON (docs/tasks.md); anything missing is inferred.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--seeds", default=1, show_default=True, type=int, help="Shuffled runs (seed..).")
@click.option(
    "--order",
    default=None,
    type=click.Choice(["file", "shuffle"]),
    help="Arrival order (default: file for one run; --seeds always shuffles).",
)
@click.option(
    "--out",
    default="simulation",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--reviewer-error",
    default=0.0,
    show_default=True,
    type=float,
    help="Share of the simulated reviewer's answers that are wrong.",
)
@click.option("--target-error", default=None, type=float, help="Override the policy's α.")
@click.option("--rows", default=None, type=int, help="Use only the first N labelled rows.")
@click.option("--chunk", default=50, show_default=True, type=int, help="Cases per arrival.")
@click.option(
    "--hgb-max-iter",
    default=None,
    type=int,
    help="Boosting rounds in training (TANDEM_HGB_MAX_ITER; default 200).",
)
@click.option(
    "--families",
    default=None,
    help="Model families compared (TANDEM_TRAIN_FAMILIES), e.g. logistic_regression.",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=int,
    help="Seeds replayed in parallel (each its own instance).",
)
@click.option(
    "--cache",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of trainings reused by later replays on identical cases (pickles: yours only).",
)
@friendly_errors
def simulate_cmd(**options: Any) -> None:
    """Replay labelled history DATA through an isolated Tandem and write a report
    (docs/backtest.md)."""
    from tandem.simulate.cli import simulate_command

    simulate_command(**options)


#: A folder `tandem simulate --seeds` wrote (seed-N/summary.json inside).
RUNS_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _arm_option(flag: str, policy: str) -> Callable[[F], F]:
    """One arm of ``simulate-compare``: `simulate --seeds` folders, repeatable."""
    return click.option(
        flag,
        multiple=True,
        required=True,
        type=RUNS_FOLDER,
        help=f"A `simulate --seeds` folder of the policy {policy} (repeatable).",
    )


def _out_option(written: str) -> Callable[[F], F]:
    return click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Where {written} go.",
    )


@main.command("simulate-table")
@click.argument("folders", nargs=-1, required=True, type=RUNS_FOLDER)
@_out_option("seeds.json and seeds.md")
@friendly_errors
def simulate_table_cmd(folders: tuple[Path, ...], out: Path) -> None:
    """One table across the seeds of several `simulate --seeds` folders (runs split across
    machines or sessions); refuses runs that differ in anything but the seed."""
    from tandem.simulate.seeds import combine

    try:
        summaries, _, md = combine(list(folders), out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(md)
    click.echo(
        f"{len(summaries)} runs (seeds {', '.join(str(s['seed']) for s in summaries)}); "
        f"table in {out / 'seeds.md'}",
        err=True,
    )


@main.command("simulate-compare")
@_arm_option("--base", "as it is")
@_arm_option("--change", "with the change")
@_out_option("compare.json and compare.md")
@friendly_errors
def simulate_compare_cmd(base: tuple[Path, ...], change: tuple[Path, ...], out: Path) -> None:
    """Two policies replayed on the same seeds, seed by seed: the paired difference in the
    final quarter's share of the oracle and whether it is more than noise
    (docs/backtest.md, "How a change is judged")."""
    from tandem.simulate.compare import write_comparison

    try:
        _, md = write_comparison(list(base), list(change), out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(md)
    click.echo(f"written: {out / 'compare.md'}", err=True)


if __name__ == "__main__":
    main()
