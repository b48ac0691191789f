"""Triton's Prometheus metrics, read with Prometheus' own text parser (one reader for the drain
launcher and the load tests)."""

from __future__ import annotations


def parse(text: str, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} for the metric families in `names`, summed over versions."""
    from prometheus_client.parser import text_string_to_metric_families

    models: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        for sample in family.samples:
            # the parser names a counter's value sample <family>_total, as OpenMetrics does
            if sample.name not in (family.name, f"{family.name}_total") or "model" not in sample.labels:
                continue
            entry = models.setdefault(sample.labels["model"], {})
            entry[family.name] = entry.get(family.name, 0.0) + float(sample.value)
    return models
