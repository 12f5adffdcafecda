"""Docs match the code: every finding code has a page, the field reference is current."""

from __future__ import annotations

import pytest

from neuron_spec.config.docgen import BEGIN, END, reference
from neuron_spec.preflight.base import FINDING_CODES, Finding

from .conftest import ROOT

DOCS = ROOT / "docs"


@pytest.mark.parametrize("code", sorted(FINDING_CODES))
def test_every_finding_code_has_a_page_with_cause_and_fix(code):
    page = DOCS / "findings" / f"{code}.md"
    text = page.read_text(encoding="utf-8")
    assert f"`{code}`" in text and "## Cause" in text and "## Fix" in text
    assert f"({code}.md)" in (DOCS / "findings" / "README.md").read_text(encoding="utf-8")


def test_no_page_without_a_code():
    pages = {p.stem for p in (DOCS / "findings").glob("*.md")} - {"README"}
    assert pages == set(FINDING_CODES)


def test_unregistered_codes_are_refused():
    with pytest.raises(ValueError):
        Finding("error", "made-up-code", "x", "y")


def test_configuration_reference_is_current():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    fix = "regenerate: python -m neuron_spec.config.docgen docs/configuration.md"
    assert text[start:end] == reference(), fix


def test_reference_lists_every_field():
    ref = reference()
    for path in (
        "target.tp_degree",
        "draft.n_positions",
        "speculation.draft_tokens",
        "sampling.top_p",
        "generation.max_new_tokens",
        "compile.s3_mirror",
    ):
        assert f"`{path}`" in ref
