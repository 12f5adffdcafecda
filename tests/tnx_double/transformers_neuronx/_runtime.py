"""Process-wide device state: initialized NeuronCores, resident models, an event log.

- Each model loads as a collective group of tp cores starting at core 0; once a set is
  initialized in a process, another model may use only exactly that set.
- Weights stay in device memory while their model object lives. The device holds
  TNX_DOUBLE_DEVICE_MODELS models at once (default 2: a draft and a target); loading one more
  fails as the runtime does when HBM is exhausted. A caller that retries a load must drop the
  first model (and let it be collected) before building the second.
- If TNX_DOUBLE_RECORD names a file, every event is appended to it as a JSON line with the
  NEURON_* environment, so tests in other processes can see what the runtime saw.
"""

from __future__ import annotations

import gc
import json
import os
import weakref

initialized_cores: frozenset[int] | None = None
events: list[dict[str, object]] = []
_resident: list[weakref.ref] = []


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
    global initialized_cores
    visible = visible_core_count()
    if visible is not None and tp > visible:
        raise RuntimeError(f"nrt_init: requested {tp} NeuronCores, only {visible} visible")
    wanted = frozenset(range(tp))
    if initialized_cores is None:
        initialized_cores = wanted
    elif initialized_cores != wanted:
        raise RuntimeError("nrt_load_collectives - global nec_comm is already init'd")


def allocate_weights(model: object) -> None:
    live = [r for r in _resident if r() is not None]
    limit = int(os.environ.get("TNX_DOUBLE_DEVICE_MODELS", "2"))
    if len(live) >= limit:
        raise RuntimeError(
            "nrt_tensor_allocate: failed to allocate device memory for weights "
            f"({len(live)} models already resident): NRT_RESOURCE"
        )
    live.append(weakref.ref(model))
    _resident[:] = live


def resident_models() -> int:
    gc.collect()
    return sum(1 for r in _resident if r() is not None)


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
    """A new process."""
    global initialized_cores
    initialized_cores = None
    events.clear()
    _resident.clear()
