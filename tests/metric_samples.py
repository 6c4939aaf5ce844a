"""Metric samples that a server process exported, looked up by sample name and labels.

``MetricsSnapshot`` parses one ``/metrics`` scrape. ``ProcessMetrics``
reads what one process left in prometheus_client's multiprocess directory,
which outlives the process.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def samples_by_key(families: Iterable[Metric]) -> dict[SampleKey, float]:
    samples: dict[SampleKey, float] = {}
    for family in families:
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


class MetricSamples:
    """Samples by sample name and labels.

    Names are sample names as exposed: counters end in ``_total`` and
    histograms contribute ``_count``, ``_sum`` and ``_bucket`` samples.
    """

    def __init__(self, samples: dict[SampleKey, float]) -> None:
        self.samples = samples

    def value(self, name: str, **labels: str) -> float:
        """Return the sample with exactly these labels, or 0.0 when it is absent.

        prometheus_client exports a labelled series only after its first use,
        so an absent series and a series at zero mean the same to a test.
        """
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of the samples whose labels include these labels."""
        required = set(labels.items())
        return sum(
            value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and required <= sample_labels
        )

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample_name, labels), value in self.samples.items() if sample_name == name}


class MetricsSnapshot(MetricSamples):
    """Samples of one ``/metrics`` scrape."""

    def __init__(self, text: str) -> None:
        super().__init__(samples_by_key(text_string_to_metric_families(text)))
        self.text = text

    def delta(self, earlier: MetricsSnapshot, name: str, **labels: str) -> float:
        """Return how much the sample with exactly these labels grew since ``earlier``."""
        return self.value(name, **labels) - earlier.value(name, **labels)

    def total_delta(self, earlier: MetricsSnapshot, name: str, **labels: str) -> float:
        """Return how much ``total(name, **labels)`` grew since ``earlier``."""
        return self.total(name, **labels) - earlier.total(name, **labels)

    def label_values(self, prefix: str) -> set[str]:
        """Return every label value of the samples whose name starts with ``prefix``."""
        return {
            label_value
            for (sample_name, sample_labels), _ in self.samples.items()
            if sample_name.startswith(prefix)
            for _, label_value in sample_labels
        }


class ProcessMetrics(MetricSamples):
    """Metric values that one server process left in a multiprocess directory."""

    def __init__(self, directory: Path, pid: int) -> None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(directory))
        super().__init__(samples_by_key(registry.collect()))
        self.directory = directory
        self.pid = pid

        # MultiProcessCollector adds up the live-gauge files of every pid it
        # finds, dead or not, because only mark_process_dead() removes them.
        # Merging this pid's file alone gives the value the process left.
        self.live_gauge_files = sorted(glob.glob(str(directory / f"gauge_live*_{pid}.db")))
        self.live_gauge_samples = samples_by_key(MultiProcessCollector.merge(self.live_gauge_files))

    def live_gauge_total(self, name: str) -> float:
        """Return the sum over all label sets of a live gauge, as this pid left it."""
        return sum(value for (sample_name, _), value in self.live_gauge_samples.items() if sample_name == name)
