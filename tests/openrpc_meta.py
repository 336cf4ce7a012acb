"""
The structure the OpenRPC 1.3 specification requires of a document, as a
JSON Schema (draft 7) for C{jsonschema}, and a check of a document with it.

Written from the specification's object definitions (OpenRPC Object, Info,
Method, Content Descriptor, Components): required fields, field types,
C{paramStructure}'s values, the pattern of component names, and no fields
besides the specification's own and C{x-} extensions.  Each schema inside
(params, results, components) is checked as a JSON Schema of draft 7, and
each C{$ref} must name a component of the document.
"""

from __future__ import annotations

from typing import Any, Iterator

_EXTENSIONS = {"^x-": {}}
_TEXT = {"type": "string"}
_SCHEMA = {"type": ["object", "boolean"]}
_REFERENCE = {"type": "object", "required": ["$ref"], "properties": {"$ref": _TEXT}}

CONTENT_DESCRIPTOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "schema"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "summary": _TEXT,
        "description": _TEXT,
        "required": {"type": "boolean"},
        "schema": _SCHEMA,
        "deprecated": {"type": "boolean"},
    },
    "patternProperties": _EXTENSIONS,
    "additionalProperties": False,
}

METHOD: dict[str, Any] = {
    "type": "object",
    "required": ["name", "params"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "tags": {"type": "array"},
        "summary": _TEXT,
        "description": _TEXT,
        "externalDocs": {"type": "object"},
        "params": {"type": "array", "items": {"oneOf": [CONTENT_DESCRIPTOR, _REFERENCE]}},
        "result": {"oneOf": [CONTENT_DESCRIPTOR, _REFERENCE]},
        "deprecated": {"type": "boolean"},
        "servers": {"type": "array"},
        "errors": {"type": "array"},
        "links": {"type": "array"},
        "paramStructure": {"enum": ["by-name", "by-position", "either"]},
        "examples": {"type": "array"},
    },
    "patternProperties": _EXTENSIONS,
    "additionalProperties": False,
}

DOCUMENT: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["openrpc", "info", "methods"],
    "properties": {
        "openrpc": {"type": "string", "pattern": r"^1\.[0-3]\.\d+$"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {"title": _TEXT, "version": _TEXT, "description": _TEXT,
                           "termsOfService": _TEXT, "contact": {"type": "object"},
                           "license": {"type": "object"}},
            "patternProperties": _EXTENSIONS,
            "additionalProperties": False,
        },
        "servers": {"type": "array"},
        "methods": {"type": "array", "items": {"oneOf": [METHOD, _REFERENCE]}},
        "components": {
            "type": "object",
            "properties": {
                name: {"type": "object", "propertyNames": {"pattern": r"^[a-zA-Z0-9.\-_]+$"}}
                for name in ("schemas", "links", "errors", "examples", "examplePairings",
                             "contentDescriptors", "tags")
            },
            "patternProperties": _EXTENSIONS,
            "additionalProperties": False,
        },
        "externalDocs": {"type": "object"},
    },
    "patternProperties": _EXTENSIONS,
    "additionalProperties": False,
}


def schemas_in(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """
    @return: every JSON Schema in a document, with where it is.
    """
    for method in document.get("methods", []):
        for param in method.get("params", []):
            yield f"{method['name']}({param['name']})", param["schema"]
        if "result" in method:
            yield f"{method['name']} result", method["result"]["schema"]
        for key, value in method.items():
            if key.startswith("x-") and isinstance(value, dict):
                yield f"{method['name']} {key}", value
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        yield f"components.schemas.{name}", schema


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def problems(document: dict[str, Any]) -> list[str]:
    """
    Check a document against the specification's structure.

    @param document: the document.
    @return: what is wrong, one line each; empty when it is valid.
    """
    from jsonschema import Draft7Validator
    found = []
    for error in Draft7Validator(DOCUMENT).iter_errors(document):
        # A oneOf (an object or a reference) says why each branch failed.
        for e in error.context or [error]:
            found.append(f"{'/'.join(map(str, e.absolute_path)) or 'document'}: {e.message}")
    components = document.get("components", {}).get("schemas", {})
    for where, schema in schemas_in(document):
        try:
            Draft7Validator.check_schema(schema)
        except Exception as e:  # jsonschema.SchemaError
            found.append(f"{where}: not a JSON Schema: {getattr(e, 'message', e)}")
    for ref in _refs(document):
        if not ref.startswith("#/components/schemas/") or \
                ref.rpartition("/")[2] not in components:
            found.append(f"$ref {ref!r} names no component")
    return found


def validator(document: dict[str, Any], schema: Any) -> Any:
    """
    @param document: the document whose components C{schema} refers to.
    @param schema: one of its schemas.
    @return: a C{jsonschema} validator of values against it.
    """
    from jsonschema import Draft7Validator
    root = dict(schema) if isinstance(schema, dict) else {}
    root["components"] = document.get("components", {})
    return Draft7Validator(root)
