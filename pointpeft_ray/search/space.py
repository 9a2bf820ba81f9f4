"""Search spaces: a small declarative YAML format over TrainConfig fields.

    description: what this space is for            # optional
    base:                                           # optional TrainConfig overrides for every trial
      mode: peft
      model: {preset: small}
    parameters:                                     # dotted TrainConfig paths, sampled in this order
      peft.prompt_length: {type: int, low: 4, high: 12, step: 2}
      peft.memory_bank: {type: categorical, choices: [true, false]}
      peft.top_k: {type: int, low: 1, high: "peft.prompt_length - 2", when: {peft.memory_bank: true}}
      optim.lr: {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
      optim.epochs: 5                               # a bare value is {type: fixed, value: 5}
    defaults:                                       # optional: a point to evaluate first
      peft.prompt_length: 10                        # (listed values; the others from the base config)

Rules:
- `when: {path: value}` or `{path: [v1, v2]}`: the parameter is sampled only when every named
  parameter took one of the listed values; a parameter named in a condition that was itself
  skipped makes the condition false, so conditions chain.
- `low` / `high` may be an expression over earlier parameters: numbers, dotted names,
  + - * / //, min(), max(). Integer bounds are rounded inwards.
- Conditions and bounds name only parameters listed above them, so the file order is the
  sampling order and no dependency can be circular.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import pyarrow as pa
from pydantic import Field

from ..configuration import StrictConfig, read_yaml_mapping
from ..engine.config import TrainConfig
from ..errors import ConfigError
from .parameters import FixedParameter, NumericParameter, Parameter, parse_parameter, same_value
from .paths import deep_merge, effective_value, resolve_field, set_path


class SearchSpaceFile(StrictConfig):
    description: Optional[str] = None
    base: dict = Field(default_factory=dict, description="TrainConfig overrides applied to every trial")
    parameters: dict = Field(description="dotted TrainConfig path -> spec")
    defaults: Optional[dict] = Field(None, description="the point to evaluate first")


class SearchSpace:
    """Parameters in sampling order, the base overrides and the optional default point."""

    def __init__(self, parameters: list[Parameter], base: dict, defaults: Optional[dict],
                 source: str = "<search space>", description: Optional[str] = None):
        self.parameters = tuple(parameters)
        self.base = dict(base)
        self.defaults = None if defaults is None else dict(defaults)
        self.source = source
        self.description = description
        self._by_path = {p.path: p for p in self.parameters}

    # --- loading ---

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<search space>") -> "SearchSpace":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping with parameters:, found {type(raw).__name__}")
        # `defaults:` with nothing under it still asks for a default point (all from the base).
        has_defaults = "defaults" in raw
        shape = SearchSpaceFile.from_dict(raw, where=source)
        if not shape.parameters:
            raise ConfigError(f"{source}: parameters: is empty")
        parameters = [_parse(source, str(path), spec) for path, spec in shape.parameters.items()]
        space = cls(parameters, shape.base, (shape.defaults or {}) if has_defaults else None,
                    source, shape.description)
        space._validate()
        return space

    def _validate(self) -> None:
        for index, parameter in enumerate(self.parameters):
            try:
                _check_references(parameter, self.parameters[:index], self._by_path)
            except ValueError as err:
                raise self._error(parameter.path, err) from None
        base = self.base_config()
        if self.defaults is not None:
            self._check_default_keys()
            self.apply(base, self.default_point(base))

    def _check_default_keys(self) -> None:
        for path in self.defaults:
            if path not in self._by_path:
                raise ConfigError(f"{self.source}: defaults: {path!r} is not a parameter of this space; "
                                  f"parameters: {', '.join(self.parameter_names())}")
            if isinstance(self._by_path[path], FixedParameter):
                raise ConfigError(f"{self.source}: defaults: {path!r} is fixed; it needs no default")

    def _error(self, path: str, err: Exception) -> ConfigError:
        return ConfigError(f"{self.source}: parameter {path!r}: {err}")

    # --- what the tables and the runner need ---

    def parameter_names(self) -> list[str]:
        return [p.path for p in self.parameters]

    def column_types(self) -> dict[str, pa.DataType]:
        return {p.path: p.column_type for p in self.parameters}

    def to_dict(self) -> dict:
        """The space as plain data (JSON-safe), e.g. for the tables' metadata."""
        return {"source": self.source, "description": self.description, "base": self.base,
                "parameters": {p.path: p.to_dict() for p in self.parameters}, "defaults": self.defaults}

    # --- sampling ---

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: one value per active parameter, in file order, named by
        its dotted path. Fixed values are included (they are not Optuna parameters)."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if not parameter.is_active(values):
                continue
            try:
                values[parameter.path] = parameter.suggest(trial, values)
            except ValueError as err:
                raise self._error(parameter.path, err) from None
        return values

    def default_point(self, base_config: Optional[TrainConfig] = None) -> Optional[dict[str, Any]]:
        """The sampled parameters' values at the `defaults:` point (listed values, the others
        from the base config), for Optuna's enqueue_trial / Tune's points_to_evaluate.
        None when the space has no `defaults:`."""
        if self.defaults is None:
            return None
        config = self.base_config(base_config)
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.is_active(values):
                values[parameter.path] = self._default_value(parameter, config, values)
        unused = [path for path in self.defaults if path not in values]
        if unused:
            raise ConfigError(f"{self.source}: defaults: {', '.join(unused)} given, but inactive at the "
                              "default point (their when: condition is false)")
        return {path: value for path, value in values.items()
                if not isinstance(self._by_path[path], FixedParameter)}

    def _default_value(self, parameter: Parameter, config: TrainConfig, values: dict) -> Any:
        if isinstance(parameter, FixedParameter):
            return parameter.value
        listed = parameter.path in self.defaults
        try:
            value = self.defaults[parameter.path] if listed else effective_value(config, parameter.path)
            parameter.check(value, values)
        except ValueError as err:
            origin = "listed under defaults:" if listed else "taken from the base config (set it under defaults:)"
            raise self._error(parameter.path, f"default point ({origin}): {err}") from None
        return value

    # --- building a trial's config ---

    def base_config(self, base_config: Optional[TrainConfig] = None) -> TrainConfig:
        """`base_config` (default: TrainConfig()) with this space's `base:` overrides."""
        dumped = (base_config or TrainConfig()).model_dump()
        try:
            return TrainConfig.from_dict(deep_merge(dumped, self.base))
        except ConfigError as err:
            raise ConfigError(f"{self.source}: base: {err}") from None

    def apply(self, base_config: Optional[TrainConfig], params: Mapping[str, Any]) -> TrainConfig:
        """The trial's TrainConfig: `base_config`, then the space's `base:`, then `params`
        (a flat {dotted path: value}, e.g. from suggest(); fixed values are added)."""
        unknown = [path for path in params if path not in self._by_path]
        if unknown:
            raise ConfigError(f"{self.source}: {', '.join(unknown)} not parameters of this space; "
                              f"parameters: {', '.join(self.parameter_names())}")
        merged = deep_merge((base_config or TrainConfig()).model_dump(), self.base)
        for path, value in self._with_fixed(params).items():
            set_path(merged, path, value)
        try:
            return _checked_against_backbone(TrainConfig.from_dict(merged))
        except ConfigError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"{self.source}: the point {{{shown}}} is not a valid config: {err}") from None

    def _with_fixed(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(params)
        for parameter in self.parameters:
            if isinstance(parameter, FixedParameter) and parameter.path not in values \
                    and parameter.is_active(values):
                values[parameter.path] = parameter.value
        return values

    def __repr__(self) -> str:
        return f"SearchSpace({self.source!r}, parameters={self.parameter_names()})"


def _checked_against_backbone(config: TrainConfig) -> TrainConfig:
    """PEFT settings that exceed the backbone (prompt_depth > depth, adapter k > sub-centres)
    would otherwise fail only when the trial builds its model."""
    if config.mode == "peft":
        backbone = config.model.backbone
        config.peft.check_backbone(backbone.depth, backbone.num_group)
    return config


def _parse(source: str, path: str, spec: Any) -> Parameter:
    try:
        return parse_parameter(path, spec, resolve_field(path))
    except ValueError as err:  # ConfigError is a ValueError too
        raise ConfigError(f"{source}: parameter {path!r}: {err}") from None


# --- references between parameters ---

def _check_references(parameter: Parameter, earlier: tuple[Parameter, ...], by_path: dict) -> None:
    known = {p.path for p in earlier}
    for name in (*parameter.when, *parameter.bound_names):
        if name in known:
            continue
        if name in by_path:
            raise ValueError(f"refers to {name!r}, which is listed after it; move {name!r} above it")
        raise ValueError(f"refers to {name!r}, which is not a parameter listed above it "
                         f"(conditions and bounds can only name earlier parameters)")
    for name, accepted in parameter.when.items():
        _check_condition_values(name, accepted, by_path[name])
    for name in parameter.bound_names:
        _check_bound_reference(parameter, by_path[name], by_path)


def _check_condition_values(name: str, accepted: tuple, target: Parameter) -> None:
    possible = target.possible_values()
    if possible is None:
        return
    never = [v for v in accepted if not any(same_value(v, p) for p in possible)]
    if never:
        raise ValueError(f"when: {name} can never be {never[0]!r}; it takes {list(possible)}")


def _check_bound_reference(parameter: Parameter, target: Parameter, by_path: dict) -> None:
    possible = target.possible_values()
    numeric = isinstance(target, NumericParameter) or (
        possible is not None and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in possible))
    if not numeric:
        raise ValueError(f"a bound refers to {target.path!r}, which is not numeric")
    implied = _implied_conditions(parameter, by_path)
    for name, accepted in target.when.items():
        if name not in implied or not set(implied[name]) <= set(accepted):
            raise ValueError(f"a bound refers to {target.path!r}, which can be inactive when this parameter "
                             f"is active; give it a when: that implies {target.path!r}'s condition")


def _implied_conditions(parameter: Parameter, by_path: dict) -> dict[str, tuple]:
    """Conditions that hold whenever `parameter` is active: its own, and, because a
    condition on an absent parameter is false, those of every parameter it names."""
    implied: dict[str, tuple] = {}
    pending = [parameter]
    while pending:
        current = pending.pop()
        for name, accepted in current.when.items():
            if name in implied:
                accepted = tuple(v for v in implied[name] if v in accepted)
            implied[name] = accepted
            pending.append(by_path[name])
    return implied
