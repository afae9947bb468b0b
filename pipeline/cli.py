"""The command line. ``main(argv) -> exit code``: the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import traceback
from typing import Any

from pipeline import __version__
from pipeline.errors import EX_FAILURE, EX_SIGINT, EX_USAGE, ConfigError, Interrupted, PipelineError

log = logging.getLogger("pipeline")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline",
                                description="Config-driven, data-parallel file processing into Parquet.")
    p.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, run_options: bool = False):
        sp.add_argument("config", metavar="CONFIG", help="the YAML job file").complete = _YAML_FILE
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted path (repeatable)")
        sp.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="log lines on stderr as text (time LEVEL job run-id: message) or as one JSON "
                             "object per line (default: text)")
        sp.add_argument("--log-file", metavar="PATH",
                        help="also append the log lines to this file (its folder must exist)").complete = _FILE
        sp.add_argument("--param", dest="params", action="append", default=[], type=_param, metavar="NAME=VALUE",
                        help="set a job parameter (repeatable); see params: in the job file")
        sp.add_argument("-v", "--verbose", action="store_true",
                        help="more detail on the terminal: a failing python stage's traceback")
        if run_options:
            sp.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: run.workers)")

    r = sub.add_parser("run", help="run a job")
    common(r, run_options=True)
    r.add_argument("--dry-run", action="store_true", help="plan and validate, write nothing")
    r.add_argument("--full-refresh", action="store_true",
                   help="rebuild the output from every input file (incremental jobs), replacing it")
    r.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")

    v = sub.add_parser("validate", help="check the job file and check it against the data")
    common(v)
    pl = sub.add_parser("plan", help="show the files, chunks and schema a run would use; writes nothing")
    common(pl, run_options=True)
    pv = sub.add_parser("preview", help="run the stages on the first rows and show them; writes nothing")
    common(pv)
    pv.add_argument("--rows", type=_positive, metavar="N",
                    help="read chunks until N rows were read, and show up to N rows (default: the first chunk, "
                         "10 rows shown)")
    h = sub.add_parser("history", help="list the past runs of a job from its state store")
    common(h)
    h.add_argument("--limit", type=_positive, default=20, help="how many runs (newest first; default 20)")
    h.add_argument("--status", choices=["succeeded", "failed", "running", "died", "up to date"],
                   help="only runs that ended so")
    h.add_argument("--json", action="store_true", help="one JSON object a run, a line each")
    st = sub.add_parser("init", help="write a starter job (and a Makefile snippet) for some input files")
    st.add_argument("directory", metavar="DIR", nargs="?", default=".",
                    help="the folder for NAME.yaml and NAME.mk (default: the current folder)")
    st.add_argument("--from", dest="sources", metavar="GLOB", nargs="+", required=True,
                    help="the input files: globs (quote them) or paths")
    st.add_argument("--name", type=_job_name, help="the job's name (default: from the first file's name)")
    st.add_argument("--force", action="store_true", help="replace NAME.yaml and NAME.mk if they exist")
    rp = sub.add_parser("report", help="write one self-contained HTML page: the last run and the job's history")
    rp.add_argument("target", metavar="OUTPUT_OR_CONFIG", help="an output directory, or the job file")
    rp.add_argument("-o", "--output", dest="out_file", metavar="FILE",
                    help="where to write the page (default: JOB-report.html in the current folder)")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key by its dotted path (repeatable)")
    rp.add_argument("--param", dest="params", action="append", default=[], type=_param, metavar="NAME=VALUE",
                    help="set a job parameter (repeatable), to find a dated job's output")
    i = sub.add_parser("inspect", help="show an output: schema, rows, files, counts")
    path: Any = i.add_argument("path", metavar="PATH",
                               help="an output directory (output.path of a job) or a URL such as s3://bucket/out")
    path.complete = _FILE
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    sub.add_parser("schema", help="print the JSON Schema of the job file (for editors and checks)")
    c = sub.add_parser("completion", help="print a shell completion script: pipeline completion bash|zsh",
                       description="Print the completion script for a shell. Bash: add "
                                   "'eval \"$(pipeline completion bash)\"' to ~/.bashrc. Zsh: write "
                                   "'pipeline completion zsh' to a file named _pipeline in a folder of $fpath.")
    c.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    return p


# what `pipeline completion` completes arguments to (shtab's action names; shtab is imported only there)
_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
_YAML_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files -g '*.(yaml|yml)'", "tcsh": "f"}


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def _job_name(text: str) -> str:
    import re

    from pipeline.config.document import JOB_NAME_PATTERN

    if not re.fullmatch(JOB_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"a job name is letters, digits, '_', '.' and '-', got {text!r}")
    return text


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def entry() -> None:
    """The ``pipeline`` command (and ``python -m pipeline``): :func:`main`, then leave without the
    interpreter's teardown (freeing modules and objects one by one, joining pyarrow's threads,
    returning the allocators' memory: about 30 ms after a W1 run).
    By then every file the command wrote is closed and synced, and every child process has exited."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):   # the reader went away (`pipeline ... | head`): nothing to say
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help -> 0, bad usage -> 2
        return int(exc.code or 0) if exc.code in (0, None) else EX_USAGE
    from pipeline import log as logmod

    try:
        logmod.setup(getattr(args, "log_format", "text"), getattr(args, "log_file", None))
    except OSError as exc:
        print(f"pipeline: error: --log-file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EX_USAGE
    # One BLAS thread per process unless the user says otherwise: a run keeps every core busy with one
    # process each already (Dask's workers do the same), and OpenBLAS's own thread spins for about 0.1 s
    # of CPU in every process that imports numpy, which pyarrow does.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    previous = signal.signal(signal.SIGTERM, _on_signal), signal.signal(signal.SIGINT, _on_signal)
    verbose = getattr(args, "verbose", False)
    try:
        return _dispatch(args)
    except PipelineError as exc:
        if isinstance(exc, ConfigError) and not exc.context.get("file") and getattr(args, "config", None):
            exc.context["file"] = args.config
        _print_report(exc)
        _final_error(f"error: {exc}", exc.exit_code, exc.context.get("traceback"), verbose, type(exc).__name__)
        return exc.exit_code
    except KeyboardInterrupt:
        _final_error("interrupted by SIGINT; nothing was published", EX_SIGINT, None, verbose, "Interrupted")
        return EX_SIGINT
    except BrokenPipeError:
        return EX_FAILURE
    except Exception as exc:  # noqa: BLE001 - a bug: say so, with the traceback in the log
        _print_report(exc)
        _final_error(f"unexpected failure: {type(exc).__name__}: {exc}", EX_FAILURE, traceback.format_exc(),
                     True, type(exc).__name__)
        return EX_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


@contextlib.contextmanager
def _loading():
    """Imports and the job's config without the cyclic garbage collector, then frozen.

    Start-up makes only objects that live for the whole command (modules, the config, the user's stage
    modules), so the collector's passes over them while they are made find nothing (about 0.08 s of a
    0.5 s command). Freezing them afterwards keeps later passes off them too, and so keeps worker processes
    forked later from copying the pages those passes would touch.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _on_signal(signum, frame):
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    raise Interrupted(f"interrupted by {name}; nothing was published", signum=signum)


def _final_error(message: str, code: int, trace: str | None, verbose: bool, kind: str) -> None:
    """The last words of a failed command: one line on stderr (a JSON line with --log-format json).

    A traceback (a user function's, limited to the job's own frames, or a bug's) goes to the log
    file, and to the terminal with ``-v``.
    """
    from pipeline import log as logmod

    text = message if message.startswith("unexpected") else message.removeprefix("error: ")
    fields = {"event": "error", "error": kind, "exit_code": code}
    if logmod.is_json():
        with_trace = dict(fields, traceback=trace) if trace else fields
        logmod.emit(logging.ERROR, text, with_trace if verbose else fields, files=False)
        logmod.emit(logging.ERROR, text, with_trace, terminal=False)
        return
    if trace and verbose:
        print(trace, file=sys.stderr)
    print(f"pipeline: {message}", file=sys.stderr, flush=True)
    logmod.to_file_only(logging.ERROR, message + (f"\n{trace}" if trace else ""))


def _print_report(exc: BaseException) -> None:
    report = getattr(exc, "report", None)
    if report is not None and report.input_files:
        print(report.summary(), file=sys.stdout, flush=True)


def _dispatch(args) -> int:
    if args.command == "schema":
        from pipeline.commands.schema import print_schema

        return print_schema()
    if args.command == "completion":
        import shtab

        print(shtab.complete(_parser(), shell=args.shell), end="", flush=True)
        return 0
    if args.command == "inspect":
        from pipeline.commands.inspect_output import inspect_output

        return inspect_output(args.path, as_json=args.json)
    if args.command == "init":
        from pipeline.commands.starter import init

        return init(args.directory, args.sources, name=args.name, force=args.force)
    if args.command == "report":
        from pipeline.commands.report import report as write_report

        return write_report(args.target, args.out_file, overrides=args.overrides, params=dict(args.params))
    with _loading():
        from pipeline.config.document import read_document

        document = read_document(args.config, args.overrides, params=dict(args.params))
    # a run's lock first: a second run of the job is refused before pydantic and pyarrow load
    held = _lock_first(document) if args.command == "run" and not args.dry_run else None
    try:
        return _with_job(args, document, held)
    finally:
        if held is not None:
            held.release()   # the run released it already, unless the job failed validation


def _lock_first(document):
    from pipeline.output.lock import lock_named_output
    from pipeline.output.publish import new_run_id

    return lock_named_output(document, new_run_id())


def _with_job(args, document, held) -> int:
    with _loading():
        from pipeline.config import load_config
        from pipeline.stages import STAGES

        job = load_config(args.config, args.overrides, params=dict(args.params), stages=STAGES,
                          document=document)
        if args.command == "run":
            from pipeline.run import run_job
    if args.command == "run" and args.dry_run:
        from pipeline.commands.job import show_plan, validate

        validate(job)
        print()
        show_plan(job, workers=args.workers)
        print()
        print("dry run: the job was validated and planned (as `pipeline validate` and `pipeline plan` do); "
              "nothing was run or written")
        return 0
    if args.command == "preview":
        from pipeline.commands.preview import preview

        return preview(job, rows=args.rows)
    if args.command == "run":
        report = run_job(job, workers=args.workers, dry_run=args.dry_run, progress=args.progress,
                         full_refresh=args.full_refresh, lock=held)
        print(report.summary(), flush=True)
        return 0
    if args.command == "history":
        from pipeline.commands.job import history

        return history(job, limit=args.limit, status=args.status, as_json=args.json,
                       params={name for name, _ in args.params})
    if args.command == "validate":
        from pipeline.commands.job import validate

        return validate(job)
    if args.command == "plan":
        from pipeline.commands.job import show_plan

        return show_plan(job, workers=args.workers)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
