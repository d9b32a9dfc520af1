"""docs/metrics.md and the family table agree, and the table is what a scrape shows.

Dashboards and alerts are written from the doc; the code builds from
``families.FAMILIES``. Each check here could fail by a rename on one side only.
"""

from __future__ import annotations

import re
from pathlib import Path

from seqinfer.service.metrics import PrometheusObserver
from seqinfer.service.metrics.families import FAMILIES, SeqinferCollector
from seqinfer.service.observer import RuntimeStats

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """seqinfer_* rows of the doc's metrics table: name -> (type, labels)."""
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`seqinfer_\w+`", cells[0]):
            kind = cells[1].split()[0]
            rows[cells[0].strip("`")] = (kind, tuple(re.findall(r"`(\w+)`", cells[2])))
    return rows


def test_every_family_is_documented_with_its_type_and_labels() -> None:
    docs = documented()
    table = {f.scraped_name: (f.kind, f.labels) for f in FAMILIES}
    assert docs == table


def test_a_scrape_shows_the_table_in_order() -> None:
    obs = PrometheusObserver()
    obs.rpc_started("Step")
    obs.rpc_finished("Step", "OK", 0.001)
    stats = [RuntimeStats(model="m:1", device="cpu")]
    collector = SeqinferCollector(obs, lambda: stats, {"version": "1"})
    scraped = [(m.name, m.type) for m in collector.collect()]
    assert scraped == [(f.name, f.kind) for f in FAMILIES]
    # Labels as the table says, on every sample but the info's (its labels are its value).
    for metric, family in zip(collector.collect(), FAMILIES, strict=True):
        for sample in metric.samples:
            names = set(sample.labels) - {"le"}
            if family.kind != "info":
                assert names == set(family.labels), (sample.name, sample.labels)
