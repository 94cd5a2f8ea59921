"""The base of every settings model a user writes (stage settings, run configs, flow forms)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Settings in which an unknown field is an error naming it: a misspelt ``"epoch": 3`` would
    otherwise be dropped without a word and the run go on with the default."""

    model_config = ConfigDict(extra="forbid")


# Marks a setting added after folders were stored with the model: at its default it is left out of
# fingerprints (:func:`mcckd.store.fingerprint`), so adding it keeps every stored folder valid. Its
# default must therefore never change meaning.
ADDED_LATER = {"fingerprint": "omit at default"}


def added_later_at_default(model: BaseModel) -> dict:
    """The fields (nested models included) that a fingerprint leaves out: ``ADDED_LATER`` ones at their
    default, as pydantic's ``exclude`` takes them."""
    omitted: dict = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.json_schema_extra == ADDED_LATER and value == field.default:
            omitted[name] = True
        elif isinstance(value, BaseModel) and (inner := added_later_at_default(value)):
            omitted[name] = inner
    return omitted
