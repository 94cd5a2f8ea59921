"""The base of every settings model a user writes (stage settings, run configs, flow forms)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Settings in which an unknown field is an error naming it: a misspelt ``"epoch": 3`` would
    otherwise be dropped without a word and the run go on with the default."""

    model_config = ConfigDict(extra="forbid")
