"""Parses a suanli node's `/metrics` with Prometheus's own OpenMetrics parser (prometheus_client)
and prints every sample as one JSON line: {"family", "type", "name", "labels", "value"}.

    python3 parse_metrics.py http://127.0.0.1:7070/metrics

Exits non-zero, with the parser's reason on stderr, when the text does not parse.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=30) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    if not content_type.startswith("application/openmetrics-text"):
        print(f"unexpected content type {content_type!r}", file=sys.stderr)
        return 1
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        print(f"does not parse: {error}", file=sys.stderr)
        return 1
    for family in families:
        for sample in family.samples:
            print(json.dumps({
                "family": family.name,
                "type": family.type,
                "name": sample.name,
                "labels": sample.labels,
                "value": sample.value,
            }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
