"""How generated data differs from the training world: what a project's generator is asked for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from healmesh.errors import ConfigError


@dataclass(frozen=True)
class DriftSpec:
    """How the generated world differs from the training world."""

    # feature name -> amount. Numeric: log-scale features are multiplied by exp(amount), others
    # shifted by amount x their standard deviation. Categorical: that share of rows is redrawn
    # favouring the rare categories.
    covariate_shift: Mapping[str, float] = field(default_factory=dict)
    # share (0..1) of positives that follow new patterns instead of the original ones
    concept_drift: float = 0.0

    def __post_init__(self) -> None:
        from healmesh import schema
        from healmesh.schema import CategoricalFeature

        s = schema.active()
        for name, amount in self.covariate_shift.items():
            if name not in s.by_name:
                raise ConfigError(f"covariate_shift names unknown feature {name!r}; "
                                  f"the schema has {', '.join(s.feature_names)}")
            if isinstance(s.by_name[name], CategoricalFeature) and not 0.0 <= amount <= 1.0:
                raise ConfigError(f"covariate_shift[{name!r}] must be in [0, 1] for a categorical feature, "
                                  f"but was {amount}")
        if not 0.0 <= self.concept_drift <= 1.0:
            raise ConfigError(f"concept_drift must be in [0, 1], but was {self.concept_drift}")


NO_DRIFT = DriftSpec()
