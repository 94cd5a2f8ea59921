"""Prefect flows: the recipes that chain the stages (see ``distill.py`` and ``demo.py``)."""

from mcckd.runtime import configure_local_runtime

configure_local_runtime()
