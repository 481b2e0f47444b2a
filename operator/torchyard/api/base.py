"""Base model and the cross-field rule mechanism shared by every torchyard API type.

Each cross-field rule is written once as a :class:`Rule`: a CEL expression that the API server
evaluates (``x-kubernetes-validations`` in the generated CRD) and a Python predicate that
``torchyard validate`` and ``torchyard run`` evaluate, with the same message and field path.
A cluster test checks that the API server and the Python side reject the same corpus.

Scalars follow the API server's OpenAPI types, not pydantic's lax coercion: a string or a
boolean is never an integer (``workers: "2"`` and ``workers: true`` are rejected), a number is
never a string, and an integral number (``2.0``) is an integer, as the API server has it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Rule:
    """One cross-field validation rule, evaluated by the API server and by Python alike."""

    cel: str
    """CEL expression over ``self`` (and ``oldSelf`` for transition rules)."""
    message: str
    """Human message; names what is wrong and how to fix it."""
    field_path: str = ""
    """Path of the offending field relative to the object the rule sits on, e.g. ``.pipeline``."""
    check: Callable[[Any], bool] | None = None
    """Python mirror of ``cel`` on the validated model; None for transition rules (oldSelf)."""

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _integral_to_int(value: Any) -> Any:
    """An integral float (``2.0``) as the int it is: OpenAPI's ``integer`` is any integral
    number, and the API server accepts ``2.0`` for an integer field; ``2.5`` stays a float and
    strict ``int`` rejects it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Core-schema keys that hold no validation of input: left as pydantic built them.
_NOT_VALIDATION = {"metadata", "serialization", "ref"}


def openapi_scalars(schema: Any) -> Any:
    """`schema` with every int/float/str/bool check made strict (the API server's type rules:
    no string or boolean coercion), and every int check also taking integral floats."""
    if isinstance(schema, list):
        return [openapi_scalars(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind == "function-before" and schema["function"].get("function") is _integral_to_int:
        return schema  # already converted (a nested model's schema is walked again)
    if kind in ("int", "float", "str", "bool") and "strict" not in schema:
        strict = {**schema, "strict": True}
        if kind == "int":
            return core_schema.no_info_before_validator_function(_integral_to_int, strict)
        return strict
    return {
        key: value if key in _NOT_VALIDATION else openapi_scalars(value)
        for key, value in schema.items()
    }


class KubeModel(BaseModel):
    """A part of a Kubernetes object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules of this object (CEL in the CRD, Python in ``torchyard validate``)."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler, /
    ) -> core_schema.CoreSchema:
        # Strictness per scalar type, not `ConfigDict(strict=True)`: that would also reject
        # `2.0` for an int, and strings for datetimes in status read back from the cluster.
        schema: core_schema.CoreSchema = openapi_scalars(handler(source))
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> KubeModel:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError(
                    "torchyard_rule",
                    "{field_path}: {message}",
                    {
                        "field_path": rule.field_path.lstrip(".") or "(object)",
                        "message": rule.message,
                    },
                )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        if cls.rules:
            target["x-kubernetes-validations"] = [rule.to_crd() for rule in cls.rules]
        # A sub-object whose every field has a default gets `default: {}` so that the API
        # server applies the nested defaults even when the user leaves the object out.
        for name, field in cls.model_fields.items():
            factory = field.default_factory
            if isinstance(factory, type) and issubclass(factory, KubeModel):
                alias = field.alias or name
                # The defaults written out (not `{}`): the API server checks a default
                # against the object's CEL rules before nested defaults apply, so `{}`
                # fails every rule that reads a defaulted field (e.g. scheduling.gang).
                target.setdefault("properties", {}).setdefault(alias, {})["default"] = (
                    factory().model_dump(by_alias=True, exclude_none=True, mode="json")
                )
        return json_schema


def sub(model: type[KubeModel]) -> Any:
    """A defaulted sub-object field (``default: {}`` in the CRD, the model's defaults in Python)."""
    return Field(default_factory=model)


def dump(model: BaseModel) -> dict[str, Any]:
    """The wire form: camelCase, no unset optionals."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")
