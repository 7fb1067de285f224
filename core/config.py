"""The base of every config section: a pydantic model that refuses unknown keys.

Each library defines the sections it consumes (merge.config, evals.probe.config,
evals.lmeval_config) on this base, and sweep.config's SweepSpec embeds them: one
definition per section, so a typo fails at load with the field's path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)
