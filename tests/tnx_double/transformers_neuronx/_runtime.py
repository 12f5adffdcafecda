"""Process-wide NeuronCore state and an event log."""

from __future__ import annotations

import json
import os

initialized_cores: frozenset[int] | None = None
events: list[dict[str, object]] = []


def visible_core_count() -> int | None:
    spec = os.environ.get("NEURON_RT_VISIBLE_CORES")
    if spec:
        count = 0
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            count += (int(hi) - int(lo) + 1) if hi else 1
        return count
    num = os.environ.get("NEURON_RT_NUM_CORES")
    return int(num) if num else None


def claim_cores(tp: int) -> None:
    """Each model loads as a collective group of tp cores starting at core 0. Once a set is
    initialized in this process, another model may use only exactly the same set."""
    global initialized_cores
    visible = visible_core_count()
    if visible is not None and tp > visible:
        raise RuntimeError(f"nrt_init: requested {tp} NeuronCores, only {visible} visible")
    wanted = frozenset(range(tp))
    if initialized_cores is None:
        initialized_cores = wanted
    elif initialized_cores != wanted:
        raise RuntimeError("nrt_load_collectives - global nec_comm is already init'd")


def record(event: str, **details: object) -> None:
    entry = {
        "event": event,
        **details,
        "env": {k: v for k, v in os.environ.items() if k.startswith("NEURON_")},
    }
    events.append(entry)
    path = os.environ.get("TNX_DOUBLE_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def reset() -> None:
    global initialized_cores
    initialized_cores = None
    events.clear()
