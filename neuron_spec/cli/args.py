"""The `neuron-spec` command line: every subcommand's arguments and help, nothing else.

The cli_* modules hold what the subcommands do; this module only describes them, one function
per subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__

EXIT_USAGE = 2

# Bounds of the flags that stand for a config field: the field's own (config.py; a test keeps
# them equal), so that a value the config would refuse is refused as the flag is read.
MAX_POSITIONS = 1 << 20  # config.MAX_POSITIONS: n_positions, and so a prompt's tokens
MAX_NEW_TOKENS = 1_000_000  # generation.max_new_tokens
MAX_BATCH = 256  # target.batch_size / draft.batch_size
MAX_PRICE_USD_PER_HOUR = 10_000.0  # 100x the dearest instance's on-demand price: a typo above
MAX_PORT = 65_535
SHOW_CHARS = 40

EPILOG = """\
examples:
  neuron-spec validate configs/trn1-llama2-70b-7b-bf16.yaml
  neuron-spec validate configs/trn1-llama2-70b-7b-bf16.yaml --instance inf2.48xlarge
  neuron-spec plan configs/inf2-llama2-70b-7b-bf16.yaml --json
  neuron-spec plan configs/trn1-llama2-70b-7b-bf16.yaml --alpha 0.8 --compare all
  neuron-spec doctor configs/inf2-llama2-70b-7b-bf16.yaml
  neuron-spec generate configs/demo-cpu.yaml --prompt "The sea is" --stream
  neuron-spec generate configs/trn1-llama2-70b-7b-bf16.yaml --dry-run
  neuron-spec bench configs/demo-cpu.yaml --draft-tokens 2,4,6
  neuron-spec verify configs/demo-cpu.yaml --out verify.json
  neuron-spec serve configs/demo-cpu.yaml --port 8080
  neuron-spec schema > neuron-spec.schema.json

exit codes: 0 ok; 1 the checks found errors (nothing was loaded), or the work failed;
  2 the command cannot run as given (usage, config, input, or this machine: port in use,
  no AWS region, a missing extra); 70 internal error (a bug: please report it);
  130 interrupted. docs/exit-codes.md has the full table.
docs: docs/configuration.md (every field), docs/findings/ (every finding code),
      docs/neuron.md (inf2/trn1 step by step), docs/deploy.md (serving and SageMaker).
"""

Sub = Any  # argparse's private _SubParsersAction


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: exit 2, no traceback
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, when `argv` names a command, only that command (all that
    parsing it needs: building every subcommand costs as much as `validate`'s own work)."""
    p = Parser(
        prog="neuron-spec",
        description="Speculative decoding for Llama on AWS Inferentia2 and Trainium: check a "
        "YAML deployment before anything is loaded, plan its NeuronCore layout, and run it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"neuron-spec {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    wanted = _command_in(argv)
    for name, describe in SUBCOMMANDS.items():
        if wanted in (None, name):
            describe(sub)
    return p


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The subcommand argv names, when it names one; None for `--help` and the like."""
    for token in argv or ():
        if not token.startswith("-"):
            return token if token in SUBCOMMANDS else None
        if token in ("-h", "--help", "--version"):
            return None
    return None


def _hidden_debug(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def _with_config(sub: Sub, name: str, help_: str, description: str) -> argparse.ArgumentParser:
    sp: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=description)
    sp.add_argument("config", metavar="CONFIG", help="YAML deployment config (see configs/)")
    sp.add_argument(
        "--instance",
        metavar="TYPE",
        help="check against this instance type instead of the config's (e.g. trn1.32xlarge)",
    )
    sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sp.add_argument(
        "--backend",
        choices=("neuronx", "nxdi", "reference"),
        help="override the config's backend (e.g. run a Neuron pair on the CPU with reference)",
    )
    _hidden_debug(sp)
    return sp


def _quiet(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="do not print the preflight's warnings (errors still stop the command)",
    )


def _validate(sub: Sub) -> None:
    v = _with_config(
        sub,
        "validate",
        "check a config against the Neuron runtime's rules and the memory budget",
        "Load CONFIG, then run every preflight rule against the instance (the config's, or "
        "--instance): tp_degree the runtime accepts, draft/target core sharing, memory per "
        "NeuronCore, lengths, vocabularies, checkpoints. Nothing is loaded or compiled. "
        "Exit 0 when there are no errors, 1 when there are, 2 when the config itself is invalid.",
    )
    v.add_argument(
        "--local",
        action="store_true",
        help="the pair will load on this machine: also check its compile.artifact_cache "
        "directory (writable, room for the artifacts); generate and serve always do",
    )


def _plan(sub: Sub) -> None:
    p = _with_config(
        sub,
        "plan",
        "show memory, core layout, tp, and the predicted latency and cost",
        "For each model: padded parameters, weights, KV cache, runtime overhead, total bytes, "
        "minimum cores and the tp values at which it fits; then the shared core layout, the "
        "largest tp both models can share, the expected speedup for a range of acceptance "
        "rates, and (on a Neuron instance) predicted TTFT and TPOT of the target and the draft, "
        "the speculative TPOT at each gamma, tokens/s, $/h and $ per million output tokens. "
        "The latency model and its measured error: docs/planning.md.",
    )
    p.add_argument(
        "--prompt-tokens",
        type=prompt_tokens,
        metavar="N",
        help=f"default 128 (1 to {MAX_POSITIONS}, the longest n_positions a config takes)",
    )
    p.add_argument(
        "--new-tokens",
        type=new_tokens,
        metavar="M",
        help=f"default generation.max_new_tokens (1 to {MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--alpha",
        type=unit_interval,
        metavar="A",
        help="per-token acceptance probability (default 0.8, an assumption)",
    )
    p.add_argument(
        "--from-bench",
        metavar="FILE",
        help="use the alpha and c measured by `neuron-spec bench --json > FILE` on the host",
    )
    p.add_argument(
        "--price",
        type=price,
        metavar="USD_PER_HOUR",
        help="your hourly price (discounts, reservations) instead of the on-demand table "
        f"(0 to {MAX_PRICE_USD_PER_HOUR:g})",
    )
    p.add_argument("--region", metavar="R", help="region of the price table (default us-east-1)")
    p.add_argument(
        "--compare",
        type=instance_list,
        metavar="INSTANCE,...",
        help="rank these instances (or 'all') where the pair fits by $ per million tokens, "
        "each at the batch size that costs least among those neuron-spec runs there",
    )
    p.add_argument(
        "--batch",
        type=batch_size,
        metavar="B",
        help="plan memory, step times, tokens/s and cost at batch size B (default: the "
        f"config's target.batch_size; 1 to {MAX_BATCH}); the batching table shows every batch "
        "size that fits",
    )


def _generate(sub: Sub) -> None:
    g = _with_config(
        sub,
        "generate",
        "generate text with speculative decoding",
        "Run the preflight, load the draft/target pair (progress on stderr), and generate from "
        "PROMPT. Prints the text and the figures: time to first token, time per output token, "
        "tokens/s, target passes, drafted/accepted tokens, acceptance rate, mean tokens per "
        "target pass, per-position acceptance and the estimated acceptance probability alpha.",
    )
    g.add_argument(
        "--prompt", action="append", metavar="TEXT", help="prompt text; repeat for a batch"
    )
    g.add_argument(
        "--max-new-tokens",
        type=new_tokens,
        metavar="N",
        help="tokens to generate per prompt (default: the config's generation.max_new_tokens)",
    )
    g.add_argument("--temperature", type=non_negative_float, metavar="T", help="0 = greedy")
    g.add_argument("--top-k", type=non_negative_int, metavar="K", help="0 = off")
    g.add_argument("--top-p", type=probability, metavar="P", help="1.0 = off")
    g.add_argument(
        "--seed", type=int, metavar="S", help="random seed for sampling (default: the config's)"
    )
    g.add_argument(
        "--draft-tokens",
        type=non_negative_int,
        metavar="G",
        help="override speculation.draft_tokens (0 = target only)",
    )
    g.add_argument("--stream", action="store_true", help="print text as tokens are accepted")
    _quiet(g)
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the load plan (calls, keyword arguments, environment) and stop; "
        "imports nothing from transformers-neuronx or NxD Inference",
    )


def _bench(sub: Sub) -> None:
    b = _with_config(
        sub,
        "bench",
        "compare the target alone with each way of speculating, and say which to use",
        "Load the models once, then decode the same prompts with the target alone and with "
        "each proposal method (a draft model, prompt lookup, suffix matching), at fixed "
        "lengths and with the adaptive length. Reports tokens/s, speedup over the target "
        "alone, acceptance, alpha, the proposal's cost ratio c, the speedup S(alpha, gamma, "
        "c) the formula predicts beside the measured one, whether greedy output matches the "
        "target's, and the setting to use.",
    )
    b.add_argument(
        "--methods",
        type=str_list,
        metavar="LIST",
        help="comma-separated proposal methods to compare: draft, ngram, suffix (default: "
        "every one the config can run; draft needs a draft model, loaded with method: draft)",
    )
    b.add_argument(
        "--draft-tokens",
        type=int_list,
        metavar="LIST",
        help="comma-separated fixed lengths (gamma) for the configured method; the adaptive "
        "length runs up to the largest (default 1,2,4,6,8 on the reference backend; on Neuron "
        "the compiled speculation.draft_tokens, since each window is its own graph). Other "
        "methods run at speculation.draft_tokens",
    )
    b.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: 3 built-in)")
    b.add_argument(
        "--max-new-tokens",
        type=new_tokens,
        default=64,
        metavar="N",
        help="tokens generated per prompt and run (default 64)",
    )
    b.add_argument(
        "--repeat",
        type=positive_int,
        default=3,
        metavar="R",
        help="runs per setting, interleaved (default 3); each setting reports its median run "
        "and the spread (min..max tokens/s) of all its runs",
    )
    _quiet(b)


def _verify(sub: Sub) -> None:
    vf = _with_config(
        sub,
        "verify",
        "prove a deployment on this host: checks, timings, agreement, one report",
        "Run on the host the config will serve from, last, once `validate` and `generate` "
        "work there. In order, stopping at the first check that fails: the host check "
        "(`doctor`; Neuron backends), the preflight, loading (compiled or loaded from the "
        "artifact cache, timed), then a fixed prompt set shipped with neuron-spec, decoded "
        "greedily with the configured speculation and with the target alone. Reports TTFT, "
        "TPOT p50/p90, tokens/s, acceptance and alpha, the speedup over the target alone, "
        "the planner's prediction beside each figure, whether the speculative output equals "
        "the target's token for token (and where it first differs), host and device memory "
        "peaks, and the exact versions. Writes one JSON report (`plan --from-bench` reads "
        "it) and prints a short summary to paste into a bug report. Exit 0 when every check "
        "passes; 1 when one fails (the host check, the preflight, loading, generation, or "
        "the outputs differ); 2 when the command cannot run as given (a bad flag or config, "
        "a report path that cannot be written, a prompt the config's lengths cannot hold) "
        "or when the check that fails is a config problem (a preflight error of that kind, "
        "a library whose API the backend cannot drive).",
    )
    vf.add_argument(
        "--max-new-tokens",
        type=new_tokens,
        metavar="N",
        help="tokens generated per prompt and way of decoding (default 64, or the config's "
        "generation.max_new_tokens if fewer)",
    )
    vf.add_argument(
        "--out",
        metavar="PATH",
        help="where the JSON report goes (default verify-<config name>-<UTC time>.json in "
        "this directory); written whole or not at all, even when a check fails",
    )


def _serve(sub: Sub) -> None:
    sv = _with_config(
        sub,
        "serve",
        "serve an OpenAI-compatible completions API",
        "Run the preflight, start an HTTP server at once (GET /health answers 503 while the "
        "models load, 200 when ready), load the pair, then serve the OpenAI-compatible routes "
        "POST /v1/completions and POST /v1/chat/completions (prompt or messages, max_tokens, "
        "temperature, top_p, stop, seed, stream), GET /v1/models and GET /v1/models/{id}, and "
        "GET /metrics (Prometheus). A request naming another model gets 404 model_not_found. "
        "Up to --batch-size requests decode together (continuous batching: a request joins "
        "the running batch at the next step and leaves it when done); the rest wait in a "
        "queue: a request is admitted while running + queued requests are fewer than "
        "--batch-size + --queue-size, beyond that 429 with Retry-After. vLLM's extension "
        "fields, token-id prompts and echo scoring are honoured; unknown fields are refused "
        "by name (docs/clients.md). SIGTERM drains: "
        "running requests get --drain-timeout seconds, then are cancelled; exit 0.",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=port, default=8080, help="port (default 8080)")
    sv.add_argument(
        "--queue-size",
        type=positive_int,
        default=16,
        metavar="N",
        help="requests that may wait for the model (default 16)",
    )
    sv.add_argument(
        "--batch-size",
        type=batch_size,
        metavar="N",
        help="requests decoded together on the reference backend (default: target.batch_size "
        f"of the config; 1 to {MAX_BATCH}); Neuron backends use the batch size their graphs "
        "were compiled for",
    )
    sv.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds the running requests may take to finish before they are "
        "cancelled (default 30)",
    )
    sv.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages of ORIGIN (scheme://host[:port]) call the API (CORS); "
        "repeat for more origins; default: none",
    )
    sv.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every /v1 route (401 otherwise); "
        "default: the NEURON_SPEC_API_KEY environment variable, else no key",
    )
    _quiet(sv)


def _deploy(sub: Sub) -> None:
    dep = sub.add_parser(
        "deploy",
        help="deploy to SageMaker real-time endpoints, or delete one",
        description="Package the config, an inference entry point and neuron-spec (as wheels) "
        "into model.tar.gz, upload it, and create or update a SageMaker endpoint; or delete "
        "an endpoint with its configuration and model. See docs/deploy.md.",
    )
    _hidden_debug(dep)
    dsub = dep.add_subparsers(dest="deploy_command", metavar="ACTION", parser_class=Parser)
    _deploy_sagemaker(dsub)
    dd = dsub.add_parser("delete", help="delete an endpoint, its configuration and its model")
    dd.add_argument("name", metavar="NAME", help="the endpoint's name (as deploy printed it)")
    dd.add_argument("--region", metavar="R", help="AWS region (default: as for sagemaker)")
    dd.add_argument("--dry-run", action="store_true", help="print the requests; send none")
    dd.add_argument("--json", action="store_true", help="print what was deleted and kept as JSON")
    _hidden_debug(dd)


def _deploy_sagemaker(dsub: Sub) -> None:
    ds = dsub.add_parser(
        "sagemaker",
        help="create or update an endpoint",
        description="Validate, package, upload, create the model, the endpoint "
        "configuration and the endpoint (or update it), wait until InService, and (with "
        "--autoscale) register it for auto scaling.",
    )
    ds.add_argument("config", metavar="CONFIG", help="YAML deployment config to deploy")
    ds.add_argument("--role", required=True, metavar="ARN", help="SageMaker execution role ARN")
    ds.add_argument(
        "--bucket",
        required=True,
        metavar="S3URL",
        help="where model.tar.gz goes: s3://bucket[/prefix]",
    )
    ds.add_argument(
        "--instance-type",
        metavar="TYPE",
        help="SageMaker instance type (default: ml.inf2.48xlarge for a Neuron backend, "
        "ml.m5.xlarge for the reference backend)",
    )
    ds.add_argument(
        "--initial-instance-count",
        type=positive_int,
        default=1,
        metavar="N",
        help="instances behind the endpoint (default 1)",
    )
    ds.add_argument(
        "--endpoint-name", metavar="NAME", help="default: neuron-spec-<config file name>"
    )
    ds.add_argument(
        "--region",
        metavar="R",
        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, or the AWS profile's region)",
    )
    ds.add_argument(
        "--image-uri",
        metavar="URI",
        help="inference container (default: AWS's PyTorch Neuron inference container in the "
        "region; docs/deploy.md lists the regions that have one)",
    )
    ds.add_argument(
        "--wait-timeout",
        type=positive_int,
        default=3600,
        metavar="S",
        help="seconds to wait for InService (default 3600: a 70B pair compiles for long)",
    )
    ds.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="once InService, register the variant with Application Auto Scaling between MIN "
        "and MAX instances, target tracking on invocations per instance (the target derived "
        "from the plan's tokens/s); `deploy delete` removes it",
    )
    ds.add_argument(
        "--autoscale-target",
        type=autoscale_target,
        metavar="N",
        help="invocations per instance per minute the scaling policy tracks (default: from "
        "the plan, 70%% of what one instance serves; at most 2^360, Application Auto "
        "Scaling's bound)",
    )
    ds.add_argument(
        "--no-dependency-wheels",
        action="store_true",
        help="ship only neuron-spec's wheel (the container must reach a package "
        "index for PyYAML, pydantic and rich)",
    )
    ds.add_argument("--dry-run", action="store_true", help="print every API request; send none")
    ds.add_argument("--json", action="store_true", help="print the result as JSON")
    _hidden_debug(ds)


def _env(sub: Sub) -> None:
    e = _with_config(
        sub,
        "env",
        "print the environment a launch exports (NEURON_RT_VISIBLE_CORES, compiler settings)",
        "Print `export NAME=value` lines for the planned NeuronCore layout and the compiler "
        "settings of CONFIG (scripts/launch.sh evaluates them). With --json, a mapping.",
    )
    e.set_defaults(json=False)


def _cache(sub: Sub) -> None:
    cache = sub.add_parser(
        "cache",
        help="list or prune compiled artifacts",
        description="The compiled-artifact cache holds what either Neuron library compiles "
        "(transformers-neuronx's NEFFs, NxD Inference's compiled model), one verified entry per "
        "cache key (everything that shapes the compiled graphs).",
    )
    _hidden_debug(cache)
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=Parser)
    for name, help_ in (
        ("list", "show entries, their size and whether they verify"),
        ("prune", "remove entries (old, broken, or all)"),
    ):
        cp = csub.add_parser(name, help=help_, description=help_)
        where = cp.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="CONFIG", help="use CONFIG's compile.artifact_cache")
        where.add_argument(
            "--dir",
            metavar="DIR",
            help="the cache directory (default ~/.cache/neuron-spec/compiled)",
        )
        cp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        _hidden_debug(cp)
        if name == "prune":
            cp.add_argument(
                "--older-than",
                type=non_negative_float,
                metavar="DAYS",
                help="remove entries created more than DAYS days ago",
            )
            cp.add_argument(
                "--broken", action="store_true", help="remove entries that fail verification"
            )
            cp.add_argument("--all", action="store_true", help="remove every entry")
            cp.add_argument("--dry-run", action="store_true", help="only say what would go")


def _doctor(sub: Sub) -> None:
    d = sub.add_parser(
        "doctor",
        help="check this host: Neuron components and versions, busy cores, RAM and disk",
        description="Report the Neuron components of this host (transformers-neuronx, "
        "NxD Inference and its release, torch-neuronx, neuronx-cc, runtime, driver) and "
        "their versions, combinations no Neuron SDK release shipped together, NeuronCores "
        "already held by other processes, and host RAM and disk against what loading and "
        "compiling CONFIG's pair needs. Every finding comes with a fix. Exit 0 when there "
        "are no errors, 1 when there are. Reads neuron-ls, the Python packages of the "
        "running interpreter, dpkg or rpm, /proc/meminfo and df; --record saves those "
        "outputs, --from reads saved ones.",
    )
    d.add_argument("config", metavar="CONFIG", nargs="?", help="the deployment to check for")
    d.add_argument("--json", action="store_true", help="print machine-readable JSON")
    where = d.add_mutually_exclusive_group()
    where.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        help="read recorded outputs from DIR instead of this host (see --record)",
    )
    where.add_argument(
        "--record",
        metavar="DIR",
        help="also save this host's raw outputs to DIR (attach them to a bug report)",
    )
    _hidden_debug(d)


def _schema(sub: Sub) -> None:
    sc = sub.add_parser(
        "schema",
        help="print the config's JSON Schema",
        description="Print the JSON Schema of the config, for editor validation "
        "(e.g. yaml-language-server: # yaml-language-server: $schema=neuron-spec.schema.json).",
    )
    _hidden_debug(sc)


# --- argument types ----------------------------------------------------------------------------


# Every subcommand, in the order `--help` lists them, and the function that describes it.
SUBCOMMANDS: dict[str, Callable[[Sub], None]] = {
    "validate": _validate,
    "plan": _plan,
    "generate": _generate,
    "bench": _bench,
    "verify": _verify,
    "serve": _serve,
    "deploy": _deploy,
    "env": _env,
    "cache": _cache,
    "doctor": _doctor,
    "schema": _schema,
}


def _shown(text: str) -> str:
    """A command-line value in a message: quoted, escaped and bounded."""
    text = repr(text)
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 1] + "…"


def bounded_int(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], or a message naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_shown(text)} is not a whole number ({what}: {low} to {high})"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is outside {low} to {high} ({what})")
        return value

    return parse


def bounded_float(
    low: float, high: float, what: str, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] when low_open): never
    inf or nan, which would reach JSON as Infinity or NaN."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number ({what})") from None
        above = value > low if low_open else value >= low
        if not (above and value <= high):  # nan fails both comparisons
            opening = "more than" if low_open else "from"
            raise argparse.ArgumentTypeError(
                f"{_shown(text)} is outside the range {opening} {low:g} to {high:g} ({what})"
            )
        return value

    return parse


prompt_tokens = bounded_int(1, MAX_POSITIONS, "prompt tokens")
new_tokens = bounded_int(1, MAX_NEW_TOKENS, "new tokens, as generation.max_new_tokens")
batch_size = bounded_int(1, MAX_BATCH, "a batch size, as target.batch_size")
port = bounded_int(1, MAX_PORT, "a TCP port")
price = bounded_float(0.0, MAX_PRICE_USD_PER_HOUR, "US dollars per instance-hour")


def autoscale_target(text: str) -> float:
    """Invocations per instance per minute, in what Application Auto Scaling takes."""
    from ..deploy.autoscale import MAX_TARGET_VALUE

    return bounded_float(0.0, MAX_TARGET_VALUE, "invocations per instance per minute", True)(text)


def instance_list(text: str) -> list[str]:
    """--compare's instance names (or 'all'), at least one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} names no instance: write instance types separated by commas "
            "(e.g. inf2.48xlarge,trn1.32xlarge) or 'all'"
        )
    return names


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("draft token counts must be positive integers")
    return sorted(set(values))


def str_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing: give a comma-separated list")
    return values
