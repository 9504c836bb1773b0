"""Validates the KEDA objects of Kubernetes manifests against the schemas of KEDA's CRDs.

kubernetes-validate bundles the schemas of Kubernetes' own kinds only. No registry package
ships KEDA's CRD file itself; cloudcoil-models-keda (PyPI) carries models generated from
KEDA 2.16.1's CRDs (keda-2.16.1-crds.yaml). This script turns a model back into a JSON Schema
and closes every object that lists its properties, because the API server prunes (and
`kubectl apply --validate=strict` rejects) fields a structural CRD schema does not name: a
misspelt field would otherwise pass here and be dropped silently in the cluster.

Usage: keda.py FILE...  Every document whose apiVersion is in the keda.sh group is checked;
the run fails if a document does not match, has a kind this KEDA version does not define, or
if the files hold no KEDA document at all (so a moved file cannot turn the check into a no-op).
"""

import sys

import jsonschema
import yaml
from cloudcoil.models.keda import v1alpha1

GROUP = "keda.sh"
# The API versions whose models the package carries.
MODULES = {"keda.sh/v1alpha1": v1alpha1}


def closed(schema):
    """The schema with `additionalProperties: false` on every object that names properties."""
    if isinstance(schema, dict):
        out = {key: closed(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def schema_for(api_version, kind):
    """The closed JSON Schema of a KEDA kind, or None when this KEDA version has no such kind."""
    module = MODULES.get(api_version)
    model = getattr(module, kind, None) if module and kind else None
    if model is None or not hasattr(model, "model_json_schema"):
        return None
    # by_alias: the manifest's camelCase names, not the models' snake_case attributes.
    return closed(model.model_json_schema(by_alias=True, mode="validation"))


def problems_of(doc):
    """What is wrong with one KEDA document, as printable lines (empty when it is valid)."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    schema = schema_for(api_version, kind)
    if schema is None:
        return [f"{api_version} {kind}: no schema for this kind in KEDA 2.16.1"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{kind}/{doc.get('metadata', {}).get('name')}: "
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def main(paths):
    checked, failures = 0, 0
    for path in paths:
        with open(path, encoding="utf-8") as file:
            docs = [d for d in yaml.safe_load_all(file) if d]
        for doc in docs:
            if str(doc.get("apiVersion", "")).split("/")[0] != GROUP:
                continue
            checked += 1
            problems = problems_of(doc)
            failures += bool(problems)
            for line in problems:
                print(f"{path}: {line}")
            if not problems:
                print(f"{path}: {doc['kind']}/{doc['metadata']['name']} matches KEDA's schema")
    if checked == 0:
        print(f"no {GROUP} document in {' '.join(paths)}")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
