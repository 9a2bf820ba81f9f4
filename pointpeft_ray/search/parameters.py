"""One searched parameter: its spec as written in YAML, checked against the config field
it names, and what it does for a trial (suggest a value, check a given one, column type).

Spec forms (`when:` is optional on each):
    {type: float, low, high, log: false, step: null}
    {type: int, low, high, step: 1, log: false}
    {type: categorical, choices: [...]}
    {type: fixed, value: ...}       (a bare scalar is shorthand for this)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping, Optional, Union

import pyarrow as pa
from pydantic import Field, field_validator

from ..configuration import StrictConfig
from .expressions import Bound, BoundExpression, parse_bound

if TYPE_CHECKING:  # paths loads TrainConfig, so torch; `pointpeft-ray report` compares values without it
    from .paths import ConfigField

# What Optuna's suggest_categorical accepts, and what a table column can hold.
SCALAR_TYPES = (type(None), bool, int, float, str)


# --- the YAML shape (unknown keys are rejected with the nearest valid names) ---

class _Spec(StrictConfig):
    when: dict = Field(default_factory=dict, description="parameter path -> value (or list of values)")


class FloatSpec(_Spec):
    type: Literal["float"]
    low: Union[float, str]
    high: Union[float, str]
    log: bool = False
    step: Optional[float] = Field(None, gt=0)


# Integer values are stored in int64 table columns: a bound beyond them is refused here,
# not at the first table write.
Int64 = Annotated[int, Field(ge=-2**63, le=2**63 - 1)]


class IntSpec(_Spec):
    type: Literal["int"]
    low: Union[Int64, str]
    high: Union[Int64, str]
    step: int = Field(1, ge=1)
    log: bool = False


class CategoricalSpec(_Spec):
    type: Literal["categorical"]
    choices: list

    @field_validator("choices")
    @classmethod
    def _int64_choices(cls, choices: list) -> list:
        for choice in choices:
            if isinstance(choice, int) and not isinstance(choice, bool) and not -2**63 <= choice < 2**63:
                raise ValueError(f"choice {choice} does not fit a 64-bit integer (the results tables' type)")
        return choices


class FixedSpec(_Spec):
    type: Literal["fixed"]
    value: Any


SPEC_TYPES: dict[str, type[_Spec]] = {"float": FloatSpec, "int": IntSpec,
                                      "categorical": CategoricalSpec, "fixed": FixedSpec}


# --- runtime parameters ---

@dataclass(frozen=True)
class Parameter:
    path: str
    when: Mapping[str, tuple]  # condition: all of these parameters hold one of the listed values

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """A parameter whose condition names an absent parameter is inactive too, so
        conditions chain (top_k when memory_bank, memory_bank when mode == peft)."""
        return all(key in values and any(same_value(values[key], v) for v in accepted)
                   for key, accepted in self.when.items())

    @property
    def bound_names(self) -> tuple[str, ...]:
        return ()

    def to_dict(self) -> dict:
        spec = self._spec()
        if self.when:
            spec["when"] = {k: list(v) if len(v) > 1 else v[0] for k, v in self.when.items()}
        return spec

    # Each kind implements:
    def suggest(self, trial, values: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def check(self, value: Any, values: Mapping[str, Any]) -> None:
        """ValueError when `value` is not one this parameter can take, given `values`."""
        raise NotImplementedError

    def possible_values(self) -> Optional[tuple]:
        """Every value it can take, where that is a finite list (for checking conditions)."""
        return None

    @property
    def column_type(self) -> pa.DataType:
        raise NotImplementedError

    def _spec(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class NumericParameter(Parameter):
    integer: bool
    low: Bound
    high: Bound
    log: bool
    step: Optional[float]

    @property
    def bound_names(self) -> tuple[str, ...]:
        return tuple(name for bound in (self.low, self.high) if isinstance(bound, BoundExpression)
                     for name in bound.names)

    def bounds(self, values: Mapping[str, Any]) -> tuple[float, float]:
        """(low, high) for this trial; integer bounds are rounded inwards."""
        low, high = (_resolve(bound, values) for bound in (self.low, self.high))
        if self.integer:
            low, high = math.ceil(low), math.floor(high)
        if low > high:
            raise ValueError(f"bounds resolve to low {low} > high {high}{_given(self.bound_names, values)}")
        if self.log and low <= 0:
            raise ValueError(f"log scale needs low > 0, bounds resolve to low {low}{_given(self.bound_names, values)}")
        return low, high

    def suggest(self, trial, values):
        low, high = self.bounds(values)
        if self.integer:
            return trial.suggest_int(self.path, low, high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, low, high, step=self.step, log=self.log)

    def check(self, value, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.integer and value != int(value)):
            raise ValueError(f"{value!r} is not {'an integer' if self.integer else 'a number'}")
        low, high = self.bounds(values)
        if not low <= value <= high:
            raise ValueError(f"{value!r} is outside [{low}, {high}]")
        if self.step and not math.isclose((value - low) / self.step, round((value - low) / self.step)):
            raise ValueError(f"{value!r} is not on the grid {low}, {low + self.step}, ... (step {self.step})")

    @property
    def column_type(self):
        return pa.int64() if self.integer else pa.float64()

    def _spec(self):
        spec = {"type": "int" if self.integer else "float", "low": _bound_text(self.low),
                "high": _bound_text(self.high), "log": self.log}
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class CategoricalParameter(Parameter):
    choices: tuple

    def suggest(self, trial, values):
        return trial.suggest_categorical(self.path, list(self.choices))

    def check(self, value, values):
        if not any(same_value(value, choice) for choice in self.choices):
            raise ValueError(f"{value!r} is not one of the choices {list(self.choices)}")

    def possible_values(self):
        return self.choices

    @property
    def column_type(self):
        return column_type_of(self.choices)

    def _spec(self):
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class FixedParameter(Parameter):
    value: Any

    def suggest(self, trial, values):
        return self.value

    def check(self, value, values):
        if not same_value(value, self.value):
            raise ValueError(f"{value!r} differs from the fixed value {self.value!r}")

    def possible_values(self):
        return (self.value,)

    @property
    def column_type(self):
        return column_type_of((self.value,))

    def _spec(self):
        return {"type": "fixed", "value": self.value}


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (a condition `memory_bank: true` must not
    match an integer 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def column_type_of(values) -> pa.DataType:
    """One Arrow type for a parameter's values (nulls allowed alongside)."""
    present = [v for v in values if v is not None]
    if not present:
        raise ValueError("needs at least one value that is not null")
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if any(isinstance(v, bool) for v in present):
        raise ValueError(f"mixes booleans with other values {list(values)}; a table column needs one type")
    if all(isinstance(v, int) for v in present):
        return pa.int64()
    if all(isinstance(v, (int, float)) for v in present):
        return pa.float64()
    if all(isinstance(v, str) for v in present):
        return pa.string()
    raise ValueError(f"mixes value types {list(values)}; a table column needs one type")


def _resolve(bound: Bound, values: Mapping[str, Any]) -> float:
    if not isinstance(bound, BoundExpression):
        return bound
    try:
        return bound.evaluate(values)
    except ZeroDivisionError:
        raise ValueError(f"bound {bound} divides by zero{_given(bound.names, values)}") from None


def _given(names, values) -> str:
    shown = ", ".join(f"{name}={values.get(name)!r}" for name in names)
    return f" (with {shown})" if shown else ""


def _bound_text(bound: Bound):
    return bound.text if isinstance(bound, BoundExpression) else bound


# --- parsing: YAML spec + the field it names -> Parameter ---

def parse_parameter(path: str, raw: Any, field: ConfigField) -> Parameter:
    """ValueError (or ConfigError from the spec shape) naming what is wrong; the caller
    adds the file and the parameter."""
    spec = _spec_shape(raw)
    when = _parse_when(spec.when)
    if isinstance(spec, (FloatSpec, IntSpec)):
        return _numeric(path, spec, field, when)
    if isinstance(spec, CategoricalSpec):
        return _categorical(path, spec, field, when)
    value = _coerce_scalar(spec.value, field)
    column_type_of((value,))
    return FixedParameter(path, when, value)


def _spec_shape(raw: Any) -> _Spec:
    if not isinstance(raw, Mapping):
        if isinstance(raw, SCALAR_TYPES):
            return FixedSpec(type="fixed", value=raw)  # shorthand: `optim.epochs: 5`
        raise ValueError(f"expected a spec mapping (type: float/int/categorical/fixed), got {raw!r}")
    kind = raw.get("type")
    if kind not in SPEC_TYPES:
        raise ValueError(f"type must be one of {', '.join(SPEC_TYPES)}, got {kind!r}")
    return SPEC_TYPES[kind].from_dict(raw)


def _parse_when(when: Mapping[str, Any]) -> dict[str, tuple]:
    parsed = {}
    for key, accepted in when.items():
        accepted = tuple(accepted) if isinstance(accepted, (list, tuple)) else (accepted,)
        if not accepted or not all(isinstance(v, SCALAR_TYPES) for v in accepted):
            raise ValueError(f"when: {key}: expected a value or a non-empty list of values, got {when[key]!r}")
        parsed[str(key)] = accepted
    return parsed


def _numeric(path: str, spec: Union[FloatSpec, IntSpec], field: ConfigField, when) -> NumericParameter:
    integer = isinstance(spec, IntSpec)
    _check_numeric_field(field, integer)
    low, high = (_static_bound(name, raw, field) for name, raw in (("low", spec.low), ("high", spec.high)))
    if not isinstance(low, BoundExpression) and not isinstance(high, BoundExpression) and low >= high:
        raise ValueError(f"low ({low}) must be < high ({high}); use type: fixed for a single value")
    if spec.log and not isinstance(low, BoundExpression) and low <= 0:
        raise ValueError(f"log: true needs low > 0, got low {low}")
    if spec.log and spec.step != (1 if integer else None):
        raise ValueError("log: true cannot be combined with a step (Optuna samples log ranges continuously)")
    return NumericParameter(path, when, integer, low, high, spec.log, spec.step)


def _check_numeric_field(field: ConfigField, integer: bool) -> None:
    kind = field.kind
    if kind in ("any", "float") or (kind == "int" and integer):
        return
    if kind == "int":
        raise ValueError(f"{field.path} holds integers: use type: int")
    raise ValueError(f"{field.path} is not numeric ({kind}): use type: categorical or fixed")


def _static_bound(name: str, raw: Any, field: ConfigField) -> Bound:
    try:
        bound = parse_bound(raw)
    except ZeroDivisionError:
        raise ValueError(f"{name}: {raw!r} divides by zero") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if not isinstance(bound, BoundExpression):
        try:
            field.coerce(bound)  # inside the field's own limits (e.g. drop_path_rate < 1)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return bound


def _categorical(path: str, spec: CategoricalSpec, field: ConfigField, when) -> CategoricalParameter:
    if not spec.choices:
        raise ValueError("choices is empty")
    choices = tuple(_coerce_scalar(choice, field) for choice in spec.choices)
    for index, choice in enumerate(choices):
        if any(same_value(choice, earlier) for earlier in choices[:index]):
            raise ValueError(f"choice {choice!r} is listed twice")
    column_type_of(choices)
    return CategoricalParameter(path, when, choices)


def _coerce_scalar(value: Any, field: ConfigField) -> Any:
    if not isinstance(value, SCALAR_TYPES):
        raise ValueError(f"values must be null, booleans, numbers or strings, got {value!r}")
    if value is None and not field.nullable:
        raise ValueError(f"{field.path} cannot be null")
    return value if value is None else field.coerce(value)
