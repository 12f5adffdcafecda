"""Accuracy of the planner's latency model (neuron_spec/perf.py) against published figures.

For every published row (Neuron 2.18, transformers-neuronx, bf16, batch 1, inf2.48xlarge):
the prediction of the model fitted on all rows, and the leave-one-out prediction (the model
refitted without that row, so the row is a true test). Also two held-out sets that no fit ever
sees: the same release's trn1.32xlarge rows (prompts up to 8192 tokens, where attention's
quadratic term dominates the time to first token) and the seed's Trainium figures. Prints JSON.
Targets: leave-one-out TPOT within +-25 % on at least 80 % of the rows, TTFT within +-35 % on
at least 70 %.

    python benchmarks/planner_accuracy.py
"""

from __future__ import annotations

import json

from neuron_spec.planning import perf

TPOT_TOL, TPOT_SHARE = 0.25, 0.80
TTFT_TOL, TTFT_SHARE = 0.35, 0.70


def _err(pred: float, pub: float) -> float:
    return round(pred / pub - 1.0, 4)


def main() -> int:
    rows = perf.PUBLISHED
    everything = perf.fit(rows)
    out_rows = []
    for i, row in enumerate(rows):
        without = perf.fit(rows[:i] + rows[i + 1 :])
        ttft_all, tpot_all = perf.predict(row, everything)
        ttft_loo, tpot_loo = perf.predict(row, without)
        out_rows.append(
            {
                "model": row.model,
                "instance": row.instance,
                "tp": row.tp,
                "prompt": row.prompt,
                "output": row.output,
                "published": {"ttft_ms": row.ttft_ms, "tpot_ms": row.tpot_ms},
                "fitted_on_all": {"ttft_ms": round(ttft_all, 2), "tpot_ms": round(tpot_all, 3)},
                "leave_one_out": {
                    "ttft_ms": round(ttft_loo, 2),
                    "tpot_ms": round(tpot_loo, 3),
                    "ttft_error": _err(ttft_loo, row.ttft_ms or ttft_loo),
                    "tpot_error": _err(tpot_loo, row.tpot_ms),
                },
            }
        )
    tpot_ok = sum(abs(r["leave_one_out"]["tpot_error"]) <= TPOT_TOL for r in out_rows)
    ttft_ok = sum(abs(r["leave_one_out"]["ttft_error"]) <= TTFT_TOL for r in out_rows)
    seed = []
    for row in perf.TRAINIUM_SEED:
        _, tpot = perf.predict(row, everything)
        seed.append(
            {
                "model": row.model,
                "instance": row.instance,
                "assumed_tp": row.tp,
                "published_tpot_ms": row.tpot_ms,
                "predicted_tpot_ms": round(tpot, 3),
                "error": _err(tpot, row.tpot_ms),
                "source": row.source,
            }
        )
    trn1 = []
    for row in perf.TRAINIUM_2_18:
        ttft, tpot = perf.predict(row, everything)
        trn1.append(
            {
                "model": row.model,
                "prompt": row.prompt,
                "output": row.output,
                "published": {"ttft_ms": row.ttft_ms, "tpot_ms": row.tpot_ms},
                "predicted": {"ttft_ms": round(ttft, 2), "tpot_ms": round(tpot, 3)},
                "ttft_error": _err(ttft, row.ttft_ms or ttft),
                "tpot_error": _err(tpot, row.tpot_ms),
            }
        )
    m = len(trn1)
    dec, pre = everything
    n = len(out_rows)
    report = {
        "constants": {"decode": dec.to_dict(), "prefill": pre.to_dict()},
        "rows": out_rows,
        "leave_one_out": {
            "tpot_within_25pct": f"{tpot_ok}/{n}",
            "ttft_within_35pct": f"{ttft_ok}/{n}",
            "tpot_max_abs_error": max(abs(r["leave_one_out"]["tpot_error"]) for r in out_rows),
            "ttft_max_abs_error": max(abs(r["leave_one_out"]["ttft_error"]) for r in out_rows),
        },
        "trn1_2_18_held_out": {
            "source": perf.TRAINIUM_2_18[0].source,
            "rows": trn1,
            "tpot_within_25pct": f"{sum(abs(r['tpot_error']) <= TPOT_TOL for r in trn1)}/{m}",
            "ttft_within_35pct": f"{sum(abs(r['ttft_error']) <= TTFT_TOL for r in trn1)}/{m}",
        },
        "trainium_seed_held_out": seed,
        "targets_met": tpot_ok >= TPOT_SHARE * n and ttft_ok >= TTFT_SHARE * n,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
