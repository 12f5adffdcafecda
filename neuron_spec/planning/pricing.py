"""On-demand prices of the catalog's instances, as data: one row per (instance, region), each
with its source and the date it was read. Prices change and discounts (Savings Plans,
reservations, Spot, Capacity Blocks) differ per account: `plan --price USD_PER_HOUR`
overrides them, and a missing row says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    instance: str
    region: str
    usd_per_hour: float
    source: str
    as_of: str  # when the figure was read from its source

    def to_dict(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "region": self.region,
            "usd_per_hour": self.usd_per_hour,
            "source": self.source,
            "as_of": self.as_of,
        }


_EC2 = "AWS EC2 On-Demand pricing, Linux (Inf2 and Trn1 instance pages, EC2 pricing page)"
_AS_OF = "2024 listing, not re-checked since; pass --price for today's rate"
# The same on-demand rate applies in us-east-1, us-east-2 and us-west-2 for these families.
_US_RATES = {
    "inf2.xlarge": 0.7582,
    "inf2.8xlarge": 1.9679,
    "inf2.24xlarge": 6.4906,
    "inf2.48xlarge": 12.9813,
    "trn1.2xlarge": 1.3438,
    "trn1.32xlarge": 21.50,
    "trn1n.32xlarge": 24.78,
}
PRICES: dict[tuple[str, str], Price] = {
    (instance, region): Price(instance, region, rate, _EC2, _AS_OF)
    for region in ("us-east-1", "us-east-2", "us-west-2")
    for instance, rate in _US_RATES.items()
}
DEFAULT_REGION = "us-east-1"


def price(instance: str, region: str = DEFAULT_REGION) -> Price | None:
    """The table's row, or None (trn2.48xlarge is sold as Capacity Blocks, not on demand;
    other regions are not in the table)."""
    return PRICES.get((instance, region))


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float) -> float:
    return usd_per_hour / (tokens_per_s * 3600.0) * 1e6
