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

# Marks a setting that says where or how a stage runs, never what it makes (the sample stage's Ray
# cluster writes the rows the local engine writes): always left out of fingerprints, so switching
# it reuses, and resumes, the same stored folder.
HOW_IT_RUNS = {"fingerprint": "omit"}


def left_out_of_fingerprints(model: BaseModel) -> dict:
    """The fields (nested models included) that a fingerprint leaves out: ``HOW_IT_RUNS`` ones, and
    ``ADDED_LATER`` ones at their default, as pydantic's ``exclude`` takes them."""
    omitted: dict = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        marker = field.json_schema_extra
        if marker == HOW_IT_RUNS or (marker == ADDED_LATER and value == field.default):
            omitted[name] = True
        elif isinstance(value, BaseModel) and (inner := left_out_of_fingerprints(value)):
            omitted[name] = inner
    return omitted
