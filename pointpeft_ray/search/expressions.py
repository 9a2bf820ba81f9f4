"""Bounds that depend on earlier parameters: `high: "peft.prompt_length - 2"`.

A bound is a number or a small arithmetic expression over the dotted names of earlier
parameters. It is parsed with `ast` and evaluated by walking the tree, never with `eval`:
only numbers, names, + - * / //, unary minus and min()/max() are accepted, so a space
file cannot run code.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Callable, Mapping, Union

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max}


@dataclass(frozen=True)
class BoundExpression:
    text: str
    tree: ast.expr
    names: tuple[str, ...]

    def evaluate(self, values: Mapping[str, float]) -> float:
        return _evaluate(self.tree, values)

    def __str__(self) -> str:
        return self.text


Bound = Union[int, float, BoundExpression]


def parse_bound(value: Union[int, float, str]) -> Bound:
    """A number stays a number; a string is parsed. A string without names becomes a
    number too: YAML reads `1e-4` (no dot) as a string, and that should just work."""
    if isinstance(value, bool):
        raise ValueError(f"a bound must be a number or an expression, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    try:
        tree = ast.parse(str(value).strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"bound {value!r} is not a valid expression") from None
    names = tuple(dict.fromkeys(_names(tree, str(value))))
    if not names:
        return _evaluate(tree, {})
    return BoundExpression(str(value), tree, names)


def _names(node: ast.expr, text: str) -> list[str]:
    """The dotted names `node` refers to; ValueError for anything outside the grammar."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"bound {text!r}: only numbers are allowed as constants, got {node.value!r}")
        return []
    if isinstance(node, (ast.Name, ast.Attribute)):
        return [_dotted(node, text)]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _names(node.left, text) + _names(node.right, text)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _names(node.operand, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and node.args and not node.keywords:
        return [name for arg in node.args for name in _names(arg, text)]
    raise ValueError(f"bound {text!r}: only numbers, parameter names, + - * / //, min() and max() are allowed")


def _dotted(node: ast.expr, text: str) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise ValueError(f"bound {text!r}: {ast.unparse(node)!r} is not a parameter name")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _evaluate(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        return values[_dotted(node, "")]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, values))
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, values) for arg in node.args))
    raise ValueError(f"cannot evaluate {ast.unparse(node)!r}")
