"""Which NxD Inference release the double plays, chosen when it is imported:

- NXDI_DOUBLE_RELEASE: the wheel's version, as its distribution metadata says it
  (default 0.8.16251; tests/neuron_fixtures.py writes that metadata);
- NXDI_DOUBLE_SOURCE: the public commit whose behaviour the double reproduces; by default the
  one read for the release: 0.8.16251 -> cd3abf3 (SDK 2.28), 0.9.17334 -> c63afe0 (SDK 2.29,
  "Release 2.29"). ef2731e ("sync code base to release-2.29-v2") is 0.9 with the generation
  adapter fixed; which of the two the 0.9.17334 wheel holds is not known, so a test names it.

0.10 (SDK 2.30/2.31) was never published as source. Played as 0.10.x, the double is a stand-in
with ef2731e's behaviour: what 0.10 would be if it kept 0.9's surface, which is all neuron-spec
relies on (and checks at load time); nothing here says 0.10 behaves like that.

What differs by source, each reproduced where the library does it, each with a test:
- `_version.__version__`: "0.8.0" at cd3abf3, "0.9.0" at c63afe0/ef2731e (`_version.py`);
- NeuronConfig sets NEURON_PLATFORM_TARGET_OVERRIDE in the process environment when it is unset
  (`_setup_kernel_target_platform`, c63afe0) and takes `enable_ve_data_parallel`;
- OnDeviceSamplingConfig's `top_k_kernel_enabled` defaults to "the platform is not trn1"
  (c63afe0; False at cd3abf3);
- `compile()` takes `disable_fail_fast` (c63afe0 application_base.py);
- models/llama/modeling_llama.py imports the NKI packages (`nki.language`, `nkilib`) at import
  time (c63afe0; cd3abf3 imported them from neuronx-cc);
- `forward()` takes `tensor_capture_hook` and every output carries `captured_tensors = None`,
  and the generation adapter reads the hook from its kwargs (ef2731e): before it the adapter
  names a variable defined nowhere.
"""

from __future__ import annotations

import os

_SOURCES = {"0.8.16251": "cd3abf3", "0.9.17334": "c63afe0"}
_MODULE_VERSION = {"cd3abf3": "0.8.0", "c63afe0": "0.9.0", "ef2731e": "0.9.0"}

RELEASE = os.environ.get("NXDI_DOUBLE_RELEASE", "0.8.16251")
SOURCE = os.environ.get("NXDI_DOUBLE_SOURCE") or _SOURCES.get(RELEASE, "ef2731e")
if SOURCE not in _MODULE_VERSION:
    raise ImportError(f"the NxDI double has no source {SOURCE!r} ({sorted(_MODULE_VERSION)})")
STAND_IN = RELEASE not in _SOURCES  # a release with no public source (0.10)

# _version.py's __version__: the wheel 0.8.16251 says 0.8.0; a 0.10 stand-in says 0.10.0
MODULE_VERSION = ".".join(RELEASE.split(".")[:2]) + ".0" if STAND_IN else _MODULE_VERSION[SOURCE]
AT_LEAST_0_9 = SOURCE in ("c63afe0", "ef2731e")
ADAPTER_FIXED = SOURCE == "ef2731e"


def platform_target() -> str:
    """torch_neuronx.utils.get_platform_target as the double's host answers it: the override
    when set, else trn1 (the double plays an Inf2/Trn1-generation host)."""
    return os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE") or "trn1"
