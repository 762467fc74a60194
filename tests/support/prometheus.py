"""Metrics text read back with Prometheus' own parser (`prometheus_client`), for tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]


def parsed(text: str) -> tuple[dict[str, str], Samples]:
    """Each sample name's metric type, and every sample by its name and then its labels
    (sorted); every metric must have its help text."""
    kinds: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for sample in family.samples:
            kinds[sample.name] = family.type
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return kinds, samples
