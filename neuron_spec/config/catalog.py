"""Built-in data: Neuron instances and Llama architectures, one row each with its source.

Everything here is plain data; rules that use it live in preflight.py and plan.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["inf2", "trn1", "trn2"]

GIB = 1024**3
GB = 1000**3


@dataclass(frozen=True)
class InstanceType:
    name: str
    platform: Platform
    chips: int
    cores: int  # NeuronCores visible to the runtime (logical cores on trn2 at LNC=2)
    memory_per_core_gib: int
    host_vcpus: int
    host_ram_gib: int
    interconnect: str
    source: str

    @property
    def device_memory_gib(self) -> int:
        return self.cores * self.memory_per_core_gib

    @property
    def memory_per_core_bytes(self) -> int:
        return self.memory_per_core_gib * GIB


_AWS_INF2 = (
    "AWS Inf2 instance page; Neuron SDK docs, inf2 architecture "
    "(2 NeuronCore-v2 per chip, 32 GiB HBM per chip)"
)
_AWS_TRN1 = (
    "AWS Trn1 instance page; Neuron SDK docs, trn1 architecture "
    "(2 NeuronCore-v2 per chip, 32 GiB HBM per chip)"
)
_AWS_TRN2 = (
    "AWS Trn2 instance page; Neuron SDK docs, trn2 architecture "
    "(8 NeuronCore-v3 per chip shown as 4 logical at LNC=2, 96 GiB HBM per chip)"
)

INSTANCES: dict[str, InstanceType] = {
    row.name: row
    for row in (
        InstanceType("inf2.xlarge", "inf2", 1, 2, 16, 4, 16, "none", _AWS_INF2),
        InstanceType("inf2.8xlarge", "inf2", 1, 2, 16, 32, 128, "none", _AWS_INF2),
        InstanceType("inf2.24xlarge", "inf2", 6, 12, 16, 96, 384, "NeuronLink-v2 chain", _AWS_INF2),
        InstanceType(
            "inf2.48xlarge", "inf2", 12, 24, 16, 192, 768, "NeuronLink-v2 ring", _AWS_INF2
        ),
        InstanceType("trn1.2xlarge", "trn1", 1, 2, 16, 8, 32, "none", _AWS_TRN1),
        InstanceType(
            "trn1.32xlarge", "trn1", 16, 32, 16, 128, 512, "NeuronLink-v2 2D torus", _AWS_TRN1
        ),
        InstanceType(
            "trn1n.32xlarge",
            "trn1",
            16,
            32,
            16,
            128,
            512,
            "NeuronLink-v2 2D torus, 2x network bandwidth",
            _AWS_TRN1,
        ),
        InstanceType(
            "trn2.48xlarge", "trn2", 16, 64, 24, 192, 2048, "NeuronLink-v3 4x4 torus", _AWS_TRN2
        ),
    )
}


@dataclass(frozen=True)
class TpRule:
    """Which tensor-parallel degrees a platform accepts, and which the libraries document."""

    platform: Platform
    description: str  # the accepted set in words, for messages
    documented: tuple[int, ...]  # values the libraries document and benchmark
    source: str

    def allowed(self, tp: int) -> bool:
        if tp < 1:
            return False
        if self.platform == "trn1":
            return tp in (1, 2, 8, 16) or tp % 32 == 0
        if self.platform == "inf2":
            return tp == 1 or tp % 2 == 0
        return tp in (1, 2, 4, 8, 16, 32, 64)

    def candidates(self, max_cores: int) -> list[int]:
        """Every accepted tp up to max_cores, ascending."""
        return [tp for tp in range(1, max_cores + 1) if self.allowed(tp)]


TP_RULES: dict[Platform, TpRule] = {
    "trn1": TpRule(
        "trn1",
        "1, 2, 8, 16 or a multiple of 32",
        (1, 2, 8, 32),
        "Neuron runtime error text 'Unsupported topology. Supported number of Neuron Cores is "
        "1, 2, 8, 16 or a multiple of 32'; transformers-neuronx developer guide lists 1, 2, 8, 32",
    ),
    "inf2": TpRule(
        "inf2",
        "1 or an even number",
        (1, 2, 4, 8, 24),
        "Neuron runtime collectives (any even count of cores on consecutive chips); "
        "transformers-neuronx and NxDI document and benchmark 1, 2, 4, 8, 24",
    ),
    "trn2": TpRule(
        "trn2",
        "1, 2, 4, 8, 16, 32 or 64 (LNC=2)",
        (1, 2, 4, 8, 16, 32, 64),
        "Neuron SDK docs, trn2 logical NeuronCore configuration (LNC=2)",
    ),
}


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's shape, enough to size its weights and KV cache."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_positions: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    published_parameters: int | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""
    family: str = field(default="")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def parameters(self) -> int:
        """Unpadded parameters: embeddings (+ LM head if untied), decoder layers, final norm."""
        h, i, d = self.hidden_size, self.intermediate_size, self.dim_per_head
        per_layer = (
            2 * h * self.num_heads * d  # q_proj, o_proj
            + 2 * h * self.num_kv_heads * d  # k_proj, v_proj
            + 3 * h * i  # gate, up, down
            + 2 * h  # two RMSNorms
        )
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + h

    @property
    def is_llama(self) -> bool:
        return self.model_type == "llama"


_HF = "official Hugging Face config.json of {}"
# Llama 3.1, 3.2 and 3.3 (Instruct): generation_config.json ends at any of <|end_of_text|>,
# <|eom_id|>, <|eot_id|>; rope_scaling is of type llama3 (factor 8, original 8192 positions).
LLAMA31_EOS = (128001, 128008, 128009)
LLAMA31_NOTE = "; EOS list from its generation_config.json; rope_scaling type llama3"

ARCHITECTURES: dict[str, Architecture] = {
    row.name: row
    for row in (
        Architecture(
            "llama-2-7b",
            "llama",
            4096,
            11008,
            32,
            32,
            32,
            32000,
            4096,
            bos_token_id=1,
            eos_token_id=(2,),
            published_parameters=6_738_415_616,
            aliases=("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", "llama2-7b"),
            source=_HF.format("meta-llama/Llama-2-7b-hf"),
            family="llama-2",
        ),
        Architecture(
            "llama-2-13b",
            "llama",
            5120,
            13824,
            40,
            40,
            40,
            32000,
            4096,
            bos_token_id=1,
            eos_token_id=(2,),
            published_parameters=13_015_864_320,
            aliases=("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf", "llama2-13b"),
            source=_HF.format("meta-llama/Llama-2-13b-hf"),
            family="llama-2",
        ),
        Architecture(
            "llama-2-70b",
            "llama",
            8192,
            28672,
            80,
            64,
            8,
            32000,
            4096,
            bos_token_id=1,
            eos_token_id=(2,),
            published_parameters=68_976_648_192,
            aliases=("meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-chat-hf", "llama2-70b"),
            source=_HF.format("meta-llama/Llama-2-70b-hf"),
            family="llama-2",
        ),
        Architecture(
            "llama-3-8b",
            "llama",
            4096,
            14336,
            32,
            32,
            8,
            128256,
            8192,
            bos_token_id=128000,
            eos_token_id=(128001,),
            published_parameters=8_030_261_248,
            aliases=("meta-llama/Meta-Llama-3-8B", "llama3-8b"),
            source=_HF.format("meta-llama/Meta-Llama-3-8B"),
            family="llama-3",
        ),
        Architecture(
            "llama-3-70b",
            "llama",
            8192,
            28672,
            80,
            64,
            8,
            128256,
            8192,
            bos_token_id=128000,
            eos_token_id=(128001,),
            published_parameters=70_553_706_496,
            aliases=("meta-llama/Meta-Llama-3-70B", "llama3-70b"),
            source=_HF.format("meta-llama/Meta-Llama-3-70B"),
            family="llama-3",
        ),
        Architecture(
            "llama-3.1-8b",
            "llama",
            4096,
            14336,
            32,
            32,
            8,
            128256,
            131072,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=8_030_261_248,
            aliases=(
                "meta-llama/Llama-3.1-8B-Instruct",
                "meta-llama/Llama-3.1-8B",
                "llama3.1-8b",
            ),
            source=_HF.format("meta-llama/Llama-3.1-8B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "llama-3.1-70b",
            "llama",
            8192,
            28672,
            80,
            64,
            8,
            128256,
            131072,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=70_553_706_496,
            aliases=(
                "meta-llama/Llama-3.1-70B-Instruct",
                "meta-llama/Llama-3.1-70B",
                "llama3.1-70b",
            ),
            source=_HF.format("meta-llama/Llama-3.1-70B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "llama-3.1-405b",
            "llama",
            16384,
            53248,
            126,
            128,
            8,
            128256,
            131072,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=405_853_388_800,
            aliases=(
                "meta-llama/Llama-3.1-405B-Instruct",
                "meta-llama/Llama-3.1-405B",
                "llama3.1-405b",
            ),
            source=_HF.format("meta-llama/Llama-3.1-405B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "llama-3.2-1b",
            "llama",
            2048,
            8192,
            16,
            32,
            8,
            128256,
            131072,
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=1_235_814_400,
            aliases=(
                "meta-llama/Llama-3.2-1B-Instruct",
                "meta-llama/Llama-3.2-1B",
                "llama3.2-1b",
            ),
            source=_HF.format("meta-llama/Llama-3.2-1B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "llama-3.2-3b",
            "llama",
            3072,
            8192,
            28,
            24,
            8,
            128256,
            131072,
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=3_212_749_824,
            aliases=(
                "meta-llama/Llama-3.2-3B-Instruct",
                "meta-llama/Llama-3.2-3B",
                "llama3.2-3b",
            ),
            source=_HF.format("meta-llama/Llama-3.2-3B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "llama-3.3-70b",
            "llama",
            8192,
            28672,
            80,
            64,
            8,
            128256,
            131072,
            bos_token_id=128000,
            eos_token_id=LLAMA31_EOS,
            published_parameters=70_553_706_496,
            aliases=(
                "meta-llama/Llama-3.3-70B-Instruct",
                "llama3.3-70b",
            ),
            source=_HF.format("meta-llama/Llama-3.3-70B-Instruct") + LLAMA31_NOTE,
            family="llama-3",
        ),
        Architecture(
            "smollm2-135m",
            "llama",
            576,
            1536,
            30,
            9,
            3,
            49152,
            8192,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=(2,),
            published_parameters=134_515_008,
            aliases=(
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                "HuggingFaceTB/SmolLM2-135M",
                "smollm2-135m-instruct",
            ),
            source=_HF.format("HuggingFaceTB/SmolLM2-135M-Instruct")
            + "; parameter count from its model card (134.5M)",
            family="smollm2",
        ),
    )
}

_ALIASES: dict[str, str] = {
    key.lower(): arch.name for arch in ARCHITECTURES.values() for key in (arch.name, *arch.aliases)
}


def find_architecture(name: str) -> Architecture | None:
    """Look a model up by catalog name or alias, case-insensitively."""
    key = _ALIASES.get(name.strip().lower())
    return ARCHITECTURES[key] if key else None


def architecture_names() -> list[str]:
    return sorted(_ALIASES)
