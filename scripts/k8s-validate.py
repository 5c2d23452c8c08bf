#!/usr/bin/env python3
"""Validates Kubernetes objects against the official OpenAPI schemas of several Kubernetes versions,
in strict mode (unknown fields are errors), with the kubernetes-validate wheel that scripts/setup.sh
installs into /opt/tale-helm-sdk.

    k8s-validate.py VERSION... < OBJECTS_JSON

OBJECTS_JSON is a JSON array of objects. Prints one JSON object:
{"checked": <objects x versions>, "errors": [{"version", "object", "error"}]}; an object whose kind
has no schema in a version is an error too (never skipped).
"""
import json
import sys

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError


def describe(obj) -> str:
    meta = obj.get("metadata") or {}
    return "%s/%s %s" % (obj.get("apiVersion"), obj.get("kind"), meta.get("name") or meta.get("generateName"))


def main() -> int:
    versions = sys.argv[1:]
    if not versions:
        print("usage: k8s-validate.py VERSION... < OBJECTS_JSON", file=sys.stderr)
        return 2
    objects = json.load(sys.stdin)
    errors = []
    checked = 0
    for version in versions:
        for obj in objects:
            checked += 1
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errors.append({"version": version, "object": describe(obj), "error": "%s: %s" % (path, e.message)})
            except (SchemaNotFoundError, VersionNotSupportedError) as e:
                errors.append({"version": version, "object": describe(obj), "error": getattr(e, "message", repr(e))})
    json.dump({"checked": checked, "errors": errors}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
