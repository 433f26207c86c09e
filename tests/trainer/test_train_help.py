"""``metarec train --help`` names every config field and every ``meta.mode`` / Meta-SGD value."""

from __future__ import annotations

import dataclasses
import re
import typing

from components.train import command
from trainer.config import TrainerConfig
from trainer.meta import ADAPTS, LEARNED_LRS, MODES


def test_the_help_lists_every_section_field_and_method() -> None:
    text = command.__doc__
    sections = dict(re.findall(r"^  (\w+) {2,}(.*(?:\n {14}.*)*)", text, flags=re.M))
    hints = typing.get_type_hints(TrainerConfig)
    for f in dataclasses.fields(TrainerConfig):
        words = set(re.findall(r"[\w+]+", sections[f.name]))
        missing = [g.name for g in dataclasses.fields(hints[f.name]) if g.name not in words]
        assert not missing, (f.name, missing)
    meta = set(re.findall(r"[\w+]+", sections["meta"]))
    assert set(MODES) | set(ADAPTS) | set(LEARNED_LRS) <= meta
