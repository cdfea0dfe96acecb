"""The `influent` command: demo, run, report, info. Errors print as one line plus a hint, never a traceback
(unless --debug), and the exit code says what kind of failure it was (see EXIT_CODES)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import DatasetNotAvailable, InfluentError, NumericalError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Which training examples made my model do this? "
                       "Exit codes: 0 ok, 1 unexpected error, 2 bad input or config, 3 data set not installed, "
                       "4 numerical failure, 130 interrupted.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: error class -> (exit code, hint); the first matching class wins
EXIT_CODES: list[tuple[type, int, str]] = [
    (DatasetNotAvailable, 3, "install the data as the message says, or use the embedded set: influent demo --data digits"),
    (NumericalError, 4, "try a larger damping, or another curvature/solver (e.g. solver = \"direct\" on a small model)"),
    (InfluentError, 2, "fix the input or config named above; `influent COMMAND --help` lists the options"),
]
QUIET = typer.Option(False, "--quiet", "-q", help="no progress bars or messages; print only the report's path")
DEBUG = typer.Option(False, "--debug", help="show the full traceback on errors")


def _guarded(job: Callable[[], Path], debug: bool) -> None:
    """Run a command and print the report path; known errors exit with their code, anything else with 1."""
    try:
        path = job()
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        for cls, code, hint in EXIT_CODES:
            if isinstance(e, cls):
                err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
                err.print(f"[dim]hint: {hint}[/dim]", soft_wrap=True)
                raise typer.Exit(code)
        err.print(f"[red]unexpected error:[/red] {type(e).__name__}: {escape(str(e))}", soft_wrap=True)
        err.print("[dim]hint: rerun with --debug for the traceback; please report it if it looks like a bug[/dim]")
        raise typer.Exit(1)
    out.print(f"report: {escape(str(path.resolve()))}", soft_wrap=True)


@app.command()
def demo(data: str = typer.Option("digits", "--data", help="digits (embedded) | mnist | fashion-mnist (`make data`) "
                                  "| smollm2 (a language model over Rotten Tomatoes reviews; `make lm`)"),
         out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder [influent-report/demo-DATA]"),
         n_train: Optional[int] = typer.Option(None, help="training examples [digits 1000, MNIST 2000, "
                                               "smollm2 1000 documents of 128 tokens]"),
         n_queries: int = typer.Option(6, help="test predictions to explain"),
         top: int = typer.Option(5, help="proponents and opponents shown per query"),
         flip: float = typer.Option(0.0, help="flip this fraction of training labels, to see them caught"),
         hidden: Optional[int] = typer.Option(None, help="hidden units of the MLP [32]"),
         quiet: bool = QUIET, debug: bool = DEBUG) -> None:
    """Train a small classifier, attribute a few test predictions and write the HTML report; or, with
    --data smollm2, find the training documents that most support a pretrained LM's completions."""
    from .demo import run_demo

    say = (lambda s: None) if quiet else (lambda s: err.print(s))
    _guarded(lambda: run_demo(data, out_dir, n_train=n_train, n_queries=n_queries, top=top, flip=flip, hidden=hidden,
                              progress=not quiet, say=say), debug)


@app.command()
def run(config: Path = typer.Argument(..., help="a TOML file naming an entry point `module:function`"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder [the config's `out`, else "
                                               "influent-report/CONFIG-NAME]"),
        quiet: bool = QUIET, debug: bool = DEBUG) -> None:
    """Attribute your own model: the entry point returns {model, task, train, query}; the config holds the options.

    Writes scores, top-k JSON, versions, timings, a copy of the config and report.html to the output folder.
    """
    from .run import run_config

    _guarded(lambda: run_config(config, out_dir, progress=not quiet), debug)


@app.command()
def report(output_dir: Path = typer.Argument(..., help="an output folder of `influent run` or `influent demo`"),
           debug: bool = DEBUG) -> None:
    """Rebuild report.html from a run's saved outputs (no model needed)."""
    from ..report import write_report

    _guarded(lambda: write_report(output_dir), debug)


@app.command()
def info() -> None:
    """Versions, threads and devices."""
    from rich.table import Table

    from ..report import versions

    table = Table(show_header=False, box=None)
    for key, value in versions().items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    out.print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())
