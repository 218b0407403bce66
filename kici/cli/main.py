"""The ``kici`` command (CLI-01): a click group and the process entry point ``main()``.

Exit codes are part of the interface (00 §3.2): 0 ok, 1 failure (compile errors, failed jobs),
2 usage (bad options, unknown event, exclusive flags), 130 Ctrl-C. ``main`` owns that mapping so
no subcommand has to: click's usage errors keep their 2, an interrupt anywhere becomes 130 instead
of click's "Aborted!" with 1, and an unexpected exception prints one line (the traceback with
``KICI_DEBUG=true``) and exits 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import click

from kici import __version__
from kici.cli.compile_cmd import compile_command, validate_command
from kici.cli.hook_cmd import hook_group
from kici.cli.init_cmd import init_command
from kici.cli.output import error
from kici.cli.preview_cmd import preview_command
from kici.cli.remote_cmd import run_remote_command
from kici.cli.run_cmd import run_group

EPILOG = """\b
Examples:
  kici init                      scaffold .kici/ with example workflows
  kici compile                   write .kici/kici.lock.json
  kici compile --locked          fail if the committed lock is stale (CI, pre-commit)
  kici preview pr:open           what a pull request would run, and why not
  kici run local push            run the matching jobs here, in a sandbox
  kici run local push --json     the same, as one JSON document on stdout
  kici run remote push --url U   submit the run to an orchestrator and follow it

\b
Environment: NO_COLOR disables colour, KICI_DEBUG=true shows tracebacks,
KICI_RUN_DIR holds run-local checkouts.
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(__version__, "--version", "-V", prog_name="kici", message="%(prog)s v%(version)s")
def cli() -> None:
    """kici — CI/CD workflows written as typed Python.

    Workflows live in .kici/workflows/*.py, compile to .kici/kici.lock.json, and run on your
    own machines; `kici run local` runs them here first.
    """


@click.command(
    "test", hidden=True, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
def test_command() -> None:
    """Not a command: use `kici preview` or `kici run remote` (exit 2)."""
    click.echo(
        "`kici test` is not a kici command. Use `kici preview <event>` for a dry run, "
        "`kici run local <event>` to run here, or `kici run remote` to run on your cluster.",
        err=True,
    )
    click.get_current_context().exit(2)


cli.add_command(init_command)
cli.add_command(compile_command)
cli.add_command(validate_command)
cli.add_command(preview_command)
run_group.add_command(run_remote_command)
cli.add_command(run_group)
cli.add_command(hook_group)
cli.add_command(test_command)


def _debug() -> bool:
    return os.environ.get("KICI_DEBUG", "").strip().lower() in ("1", "true", "yes")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run ``kici`` and exit with the documented code."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="kici", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Interrupted.", err=True)
        code = 130
    except BrokenPipeError:
        code = 1
    except Exception as exc:
        if _debug():
            traceback.print_exc()
        error(f"{type(exc).__name__}: {exc}")
        code = 1
    else:
        code = result if isinstance(result, int) else 0
    sys.exit(code)


if __name__ == "__main__":
    main()
