"""The `neuron-spec` command: parse the command line, run the subcommand, turn errors into
messages and exit codes. The subcommands live in cli_check (validate, plan, schema, env,
doctor), cli_run (generate, bench, serve), cli_verify (verify) and cli_deploy (deploy, cache);
cli_args describes their arguments.

Exit codes (docs/exit-codes.md): 0 ok; 1 the checks found errors, or the work failed;
2 the command cannot run as given (usage, config, input, or something on this machine to
change first); 70 internal error (a bug); 130 interrupted. User errors never show a traceback
unless --debug is given.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, NeuronSpecError
from .args import build_parser
from .common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = ["COMMANDS", "main"]

# Each subcommand lives with its kind, imported only when it runs: `validate` never compiles
# the code of `deploy`.
COMMANDS = {
    "validate": "check:cmd_validate",
    "plan": "check:cmd_plan",
    "schema": "check:cmd_schema",
    "env": "check:cmd_env",
    "doctor": "check:cmd_doctor",
    "generate": "run:cmd_generate",
    "bench": "run:cmd_bench",
    "verify": "verify:cmd_verify",
    "serve": "run:cmd_serve",
    "deploy": "deploy:cmd_deploy",
    "cache": "deploy:cmd_cache",
}


def command(name: str) -> Callable[[Any], int]:
    module, function = COMMANDS[name].split(":")
    fn: Callable[[Any], int] = getattr(importlib.import_module(f".{module}", __package__), function)
    return fn


def _report_error(exc: NeuronSpecError, as_json: bool) -> None:
    if as_json:
        body: dict[str, Any] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, ConfigError):
            body["problems"] = [p.to_dict() for p in exc.problems]
        print(json.dumps(body, indent=2))
        return
    if isinstance(exc, ConfigError):
        sys.stderr.write(f"error: {len(exc.problems)} problem(s) in the config:\n")
        for p in exc.problems:
            sys.stderr.write(f"  {p.render()}\n")
    else:
        sys.stderr.write(f"error: {exc}\n")


def main(argv: Sequence[str] | None = None) -> int:
    # serve's request models (pydantic) use no plugins; skipping the entry-point scan saves ~40 ms.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return command(args.command)(args)
    except NeuronSpecError as exc:
        if debug:
            raise
        _report_error(exc, bool(getattr(args, "json", False)))
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in neuron-spec; rerun with --debug for the traceback.\n"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
