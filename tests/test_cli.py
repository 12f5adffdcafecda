"""The CLI as users meet it: exit codes, located messages, JSON, no tracebacks."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest

from neuron_spec.cli.args import SUBCOMMANDS, build_parser
from neuron_spec.cli.main import main

from .conftest import BASE_CONFIG, CONFIGS, shipped_configs

TRN1_BF16 = str(CONFIGS / "trn1-llama2-70b-7b-bf16.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def validate_json(capsys, path, *extra: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, "validate", str(path), "--json", *extra)
    return code, json.loads(out)


@pytest.mark.parametrize("path", shipped_configs())
def test_shipped_configs_validate(capsys, path, shipped):
    code, body = validate_json(capsys, shipped(path))
    assert code == 0 and body["ok"] is True


@pytest.mark.parametrize(
    ("case", "old", "new", "instance", "code", "path"),
    [
        ("tp24-trn1", "tp_degree: 32", "tp_degree: 24", None, "tp-unsupported", "target.tp_degree"),
        (
            "tp16-12cores",
            "tp_degree: 32",
            "tp_degree: 16",
            "inf2.24xlarge",
            "tp-exceeds-cores",
            "target.tp_degree",
        ),
        (
            "draft16-target32",
            "tp_degree: 32, n_positions: 2048, batch_size: 1}\nspec",
            "tp_degree: 16, n_positions: 2048, batch_size: 1}\nspec",
            None,
            "tp-mismatch",
            "draft.tp_degree",
        ),
        (
            "70b-tp8",
            "tp_degree: 32",
            "tp_degree: 8",
            None,
            "memory-over-budget",
            "target.tp_degree",
        ),
        (
            "batch4",
            "batch_size: 1}\ndraft",
            "batch_size: 4}\ndraft",
            None,
            "batch-speculation",
            "target.batch_size",
        ),
    ],
)
def test_validate_rejects_with_located_message(
    capsys, write_config, case, old, new, instance, code, path
):
    cfg = write_config(BASE_CONFIG.replace(old, new))
    extra = ("--instance", instance) if instance else ()
    exit_code, body = validate_json(capsys, cfg, *extra)
    assert exit_code == 1 and body["ok"] is False
    hits = [f for f in body["findings"] if f["code"] == code and f["severity"] == "error"]
    assert hits, body["findings"]
    assert hits[0]["path"] == path
    line = 3 if path.startswith("target") else 4
    assert hits[0]["location"] == f"{cfg}:{line}"
    assert set(hits[0]) >= {"severity", "code", "path", "message", "fix"}
    # the human rendering says the same, with the location
    exit_code, out, _ = run(capsys, "validate", str(cfg), *extra)
    assert exit_code == 1 and code in out and f"{cfg.name}:{line}" in out


def test_key_typo_exit2_with_did_you_mean(capsys, write_config):
    cfg = write_config(BASE_CONFIG.replace("acceptor:", "aceptor:"))
    code, _, err = run(capsys, "validate", str(cfg))
    assert code == 2
    assert "Did you mean 'acceptor'" in err and f"{cfg}:5" in err
    assert "Traceback" not in err


def test_yaml_syntax_error_exit2_with_line(capsys, write_config):
    cfg = write_config("instance: trn1.32xlarge\ntarget:\n  model: [llama-2-70b\ndraft: {}\n")
    code, _, err = run(capsys, "validate", str(cfg))
    assert code == 2 and "YAML syntax error" in err
    assert f"{cfg}:" in err


def test_config_error_as_json(capsys, write_config):
    cfg = write_config(BASE_CONFIG.replace("tp_degree: 32", "tp_degree: -1"))
    code, out, _ = run(capsys, "validate", str(cfg), "--json")
    body = json.loads(out)
    assert code == 2 and body["error"] == "ConfigError"
    assert {p["path"] for p in body["problems"]} == {"target.tp_degree", "draft.tp_degree"}


def test_unknown_instance_flag_is_usage_error(capsys):
    code, _, err = run(capsys, "validate", TRN1_BF16, "--instance", "trn1.32xl")
    assert code == 2 and "Did you mean 'trn1.32xlarge'" in err


def test_missing_config_file(capsys):
    code, _, err = run(capsys, "plan", "/nonexistent/x.yaml")
    assert code == 2 and "file not found" in err


def test_usage_errors_exit2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2
    assert main([]) == 2


def test_plan_json_shape(capsys):
    code, out, _ = run(capsys, "plan", TRN1_BF16, "--json")
    body = json.loads(out)
    assert code == 0
    for role in ("target", "draft"):
        assert body["models"][role]["min_cores"] >= 1
        assert body["models"][role]["total_bytes"] > 0
        assert body["recommendation"][role]["tp_degree"] == 32


def test_plan_human_output(capsys):
    code, out, _ = run(capsys, "plan", TRN1_BF16, "--instance", "inf2.48xlarge")
    # the config's tp 32 exceeds inf2.48xlarge's cores: plan still prints, exits 1
    assert code == 1
    assert "recommendation" in out and "tp_degree: 24" in out


def test_schema_is_json_schema(capsys):
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0 and schema["type"] == "object"
    assert {"target", "draft", "speculation"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow  # a fresh interpreter: what `validate` imports
def test_validate_imports_no_heavy_libraries():
    code = (
        "import sys\n"
        "from neuron_spec.cli.main import main\n"
        f"rc = main(['validate', {TRN1_BF16!r}])\n"
        f"rc2 = main(['plan', {TRN1_BF16!r}, '--json'])\n"
        f"main(['generate', {TRN1_BF16!r}, '--dry-run'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'boto3', 'botocore', "
        "'transformers_neuronx', 'numpy', 'rich.progress') if m in sys.modules)\n"
        "print('HEAVY', heavy, rc, rc2)\n"
    )
    proc = _subprocess("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY [] 0 0" in proc.stdout


@pytest.mark.slow  # `python -m neuron_spec` as a process
def test_module_entry_point_and_internal_errors_have_no_traceback(write_config):
    proc = _subprocess("-m", "neuron_spec", "validate", TRN1_BF16, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    bad = write_config("target: [1, 2\n")
    proc = _subprocess("-m", "neuron_spec", "validate", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = _subprocess("-m", "neuron_spec", "--debug", "validate", str(bad))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_dry_run_uses_every_override_it_accepts(capsys):
    code, out, _ = run(capsys, "generate", TRN1_BF16, "--dry-run", "--json")
    default = json.loads(out)
    code, out, err = run(
        capsys,
        "generate",
        TRN1_BF16,
        "--dry-run",
        "--json",
        "--draft-tokens",
        "3",
        "--temperature",
        "0.9",
    )
    body = json.loads(out)
    assert code == 0, err
    assert default["target"]["speculation_window"] == 7
    assert body["target"]["speculation_window"] == 4  # draft_tokens 3 + 1
    assert any("enable_speculative_decoder(4" in c for c in body["calls"])
    assert any("drafts sampled from its warped" in c for c in body["calls"])  # lossless, T=0.9
    assert not any("sampled" in c for c in default["calls"])
    import dataclasses

    from neuron_spec.backends.neuronx.plan import build_load_plan
    from neuron_spec.config.spec import load_config

    cfg = load_config(TRN1_BF16)
    spec = cfg.spec.replace(
        speculation=cfg.spec.speculation.replace(loop="library"),
        sampling=cfg.spec.sampling.replace(temperature=0.9),
    )
    library = build_load_plan(dataclasses.replace(cfg, spec=spec))
    assert any("SampledDraftProvider" in c for c in library.calls())


def test_an_override_out_of_range_names_the_flag(capsys):
    code, _, err = run(capsys, "generate", TRN1_BF16, "--dry-run", "--temperature", "500")
    assert code == 2 and "--temperature 500" in err and "sampling.temperature" in err


def test_dry_run_and_env_check_the_instance_they_are_given(capsys):
    code, _, err = run(capsys, "generate", TRN1_BF16, "--dry-run", "--instance", "inf2.24xlarge")
    assert code == 1 and "tp-exceeds-cores" in err and "before loading" in err
    code, out, err = run(capsys, "env", TRN1_BF16, "--instance", "inf2.24xlarge")
    assert code == 1 and "tp-exceeds-cores" in err and "export" not in out
    code, out, _ = run(capsys, "env", TRN1_BF16, "--instance", "trn1.32xlarge")
    assert code == 0 and "export NEURON_RT_VISIBLE_CORES=0-31" in out
    code, _, err = run(capsys, "env", TRN1_BF16, "--backend", "reference")
    assert code == 2 and "reference backend needs none" in err


def test_reference_backend_on_catalog_names_is_a_preflight_error_with_the_fix(capsys):
    code, out, _ = run(capsys, "validate", TRN1_BF16, "--backend", "reference", "--json")
    body = json.loads(out)
    assert code == 1
    errs = {f["path"]: f for f in body["findings"] if f["severity"] == "error"}
    assert set(errs) == {"target.model", "draft.model"}
    assert errs["target.model"]["code"] == "checkpoint-catalog"
    assert "configs/demo-cpu.yaml" in errs["target.model"]["fix"]


def test_piped_plan_is_full_width_and_plain(capsys):
    code, out, err = run(capsys, "plan", TRN1_BF16)  # capsys: stdout is a pipe, not a tty
    assert code == 0, err
    assert "\x1b[" not in out + err
    assert "…" not in out  # nothing cut to fit 80 columns
    headers = ("alpha", "speedup at 6", "best draft_tokens", "best speedup")
    assert any(all(h in line for h in headers) for line in out.splitlines())
    assert "estimated c = draft/target step time =" in out  # a title on one line
    assert any(len(line) > 100 for line in out.splitlines())  # not wrapped at 80


def test_no_color_and_terminal_width_on_a_terminal(monkeypatch):
    from neuron_spec.cli import term

    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr(term.sys, "stdout", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert term.console().colour is False
    monkeypatch.delenv("NO_COLOR")
    assert term.console().colour is True


def test_an_internal_error_has_its_own_exit_code(capsys, monkeypatch):
    from neuron_spec.cli import check as cli_check

    def broken(_args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_check, "cmd_schema", broken)
    assert main(["schema"]) == 70
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug" in err and "Traceback" not in err


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_a_command_parses_the_same_when_only_it_is_built(name):
    def sub_help(parser: argparse.ArgumentParser) -> str:
        [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return action.choices[name].format_help()

    full, lazy = build_parser(), build_parser([name, "x"])
    assert sub_help(lazy) == sub_help(full)
    assert "Speculative decoding" in full.format_help() and name in full.format_help()


def test_bench_says_plainly_when_speculation_does_not_pay():
    from neuron_spec.cli import term
    from neuron_spec.cli.run import _render_bench
    from neuron_spec.planning.bench import advice

    row = {"method": "draft", "adaptive": False, "draft_tokens": 4, "tokens_per_s": 7.6,
           "tokens_per_s_min": 7.0,
           "tokens_per_s_max": 8.0, "speedup": 0.76, "predicted_speedup": 1.2,
           "acceptance_rate": 1.0, "mean_tokens_per_pass": 4.1, "alpha": 0.884, "c": 0.4,
           "outputs_match_target": True}  # fmt: skip
    report = {"baseline": {"tokens_per_s": 10.0, "tokens_per_s_min": 9.0, "tokens_per_s_max": 11.0,
                           "target_step_ms": 100.0},
              "prompts": 2, "max_new_tokens": 16, "repeat": 3, "speculative": [row],
              "best_draft_tokens": 4, "best_speedup": 0.76}  # fmt: skip
    report["advice"] = advice({**row})
    buf = io.StringIO()
    _render_bench(term.Console(buf, colour=False), report)
    text = buf.getvalue()
    assert "speculation does not pay here" in text and "best:" not in text
    assert "acceptance: the share of proposed tokens" in text
    report["best_speedup"] = row["speedup"] = 1.5
    report["advice"] = advice({**row})
    buf = io.StringIO()
    _render_bench(term.Console(buf, colour=False), report)
    said = buf.getvalue()
    assert "best: use speculation: {method: draft, draft_tokens: 4, adaptive: false}" in said
    assert "(1.50x the target alone)" in said


def test_every_option_of_every_command_has_help_text():
    from neuron_spec.cli.args import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{path} {action.option_strings or action.dest}")

    walk(build_parser(), "neuron-spec")
    assert not missing, missing


# --- flags that stand for a number: refused as they are read, never a crash or a non-finite ---


def _refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["plan", TRN1_BF16, "--batch", "257"], "outside 1 to 256"),
        (["plan", TRN1_BF16, "--batch", "0"], "outside 1 to 256"),
        (["plan", TRN1_BF16, "--prompt-tokens", "1000000000"], "outside 1 to 1048576"),
        (["plan", TRN1_BF16, "--prompt-tokens", "1e9"], "not a whole number"),
        (["plan", TRN1_BF16, "--new-tokens", "10000000000"], "outside 1 to 1000000"),
        (["plan", TRN1_BF16, "--price", "inf", "--json"], "outside the range"),
        (["plan", TRN1_BF16, "--price", "nan", "--json"], "outside the range"),
        (["plan", TRN1_BF16, "--price", "1e308", "--json"], "outside the range"),
        (["plan", TRN1_BF16, "--compare", ",,,"], "names no instance"),
        (["serve", TRN1_BF16, "--batch-size", "1000000000"], "outside 1 to 256"),
        (["serve", TRN1_BF16, "--batch-size", "100000000000000000000"], "outside 1 to 256"),
        (["serve", TRN1_BF16, "--port", "70000"], "outside 1 to 65535"),
        (["generate", TRN1_BF16, "--max-new-tokens", "10000000"], "outside 1 to 1000000"),
    ],
)
def test_a_number_out_of_its_range_is_refused_as_the_flag_is_read(capsys, argv, says):
    err = _refused(capsys, *argv)
    assert says in err and argv[-2 if argv[-1] == "--json" else -1][:8] in err
    assert "internal error" not in err


def test_autoscale_target_beyond_what_application_auto_scaling_takes(capsys):
    base = ["deploy", "sagemaker", TRN1_BF16, "--role", "arn:aws:iam::1:role/r", "--bucket",
            "s3://b", "--autoscale", "1:2", "--dry-run", "--autoscale-target"]  # fmt: skip
    assert "outside the range" in _refused(capsys, *base, "1e300")
    assert "outside the range" in _refused(capsys, *base, "inf")
    assert "outside the range" in _refused(capsys, *base, "0")


def test_the_flag_bounds_are_the_config_fields_bounds():
    from neuron_spec.cli import args as cli_args
    from neuron_spec.config import spec as config
    from neuron_spec.deploy import autoscale

    assert cli_args.MAX_POSITIONS == config.MAX_POSITIONS
    from neuron_spec.config.schema import Invalid

    spec = config.load_config_text(BASE_CONFIG).spec
    assert spec.target.replace(batch_size=cli_args.MAX_BATCH).batch_size == cli_args.MAX_BATCH
    with pytest.raises(Invalid):
        spec.target.replace(batch_size=cli_args.MAX_BATCH + 1)
    gen = spec.generation.replace(max_new_tokens=cli_args.MAX_NEW_TOKENS)
    with pytest.raises(Invalid):
        gen.replace(max_new_tokens=cli_args.MAX_NEW_TOKENS + 1)
    assert autoscale.MAX_TARGET_VALUE == 2.0**360


def test_plan_at_the_largest_flags_stays_finite_json(capsys):
    code, out, err = run(capsys, "plan", TRN1_BF16, "--json", "--batch", "256",
                         "--prompt-tokens", "1048576", "--new-tokens", "1000000",
                         "--price", "10000")  # fmt: skip
    assert code in (0, 1), err
    json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in plan --json"))


def test_generate_refuses_an_empty_prompt_before_loading(capsys, monkeypatch):
    from neuron_spec.cli import run as cli_run

    def never(*_a, **_k):
        raise AssertionError("the models were loaded for an empty prompt")

    monkeypatch.setattr(cli_run, "_load_generator", never)
    code, _, err = run(capsys, "generate", str(CONFIGS / "demo-cpu.yaml"), "--prompt", "")
    assert code == 2 and "--prompt" in err and "empty" in err
    code, _, err = run(capsys, "generate", str(CONFIGS / "demo-cpu.yaml"),
                       "--prompt", "hi", "--prompt", "")  # fmt: skip
    assert code == 2 and "prompt 2" in err


def test_compare_where_nothing_fits_says_so_instead_of_an_empty_table(capsys):
    code, out, _ = run(capsys, "plan", TRN1_BF16, "--compare", "inf2.xlarge, inf2.8xlarge")
    assert code == 1 and "fits none of the 2 instance(s) named" in out
    assert "excluded inf2.xlarge" in out and "excluded inf2.8xlarge" in out and "┏" not in out
