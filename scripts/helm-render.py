#!/usr/bin/env python3
"""Lints and renders the Helm chart with Helm's own engine (helm v4 SDK, via the helm-python-sdk
wheel that scripts/setup.sh installs into /opt/tale-helm-sdk; Debian ships no helm binary).

    helm-render.py CHART_DIR RELEASE NAMESPACE VALUES_JSON

Prints one JSON object: {"lint": <helm lint --strict report>, "documents": [{"template", "object"}],
"notes": <NOTES.txt as rendered>} with every rendered YAML document parsed.
"""
import json
import sys

import helm_python as helm
import yaml


def main() -> int:
    chart_dir, release, namespace, values_json = sys.argv[1:5]
    values = json.loads(values_json)
    report = helm.lint(chart_dir, values, strict=True, namespace=namespace)
    documents = []
    notes = ""
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if obj is not None:
                documents.append({"template": template, "object": obj})
    json.dump({"lint": report, "documents": documents, "notes": notes}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
