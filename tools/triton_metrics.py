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


def sample_key(name: str, labels: dict[str, str]) -> str:
    """`name` or `name{label="value",...}`: how compress.shadow names what it counts."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def samples(text: str, prefix: str = "yolo_") -> dict[str, float]:
    """Every sample whose name starts with `prefix`, keyed by `sample_key`."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                key = sample_key(sample.name, dict(sample.labels))
                values[key] = values.get(key, 0.0) + float(sample.value)
    return values


def scrape(metrics_url: str, prefix: str = "yolo_", timeout_s: float = 5.0) -> dict[str, float]:
    """`samples` of a live /metrics endpoint."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        return samples(response.read().decode(), prefix)
