"""ModelMesh's metric facts as `../shared/METRICS.md` writes them: the names table and the buckets.

`metric_table()` expands the table's shorthand (`a / b` for two names, `a_x_total / _y_total`
for a shared stem) into {name: (type, labels)}; `buckets()` reads the bucket lines
(`0.5, 1, ...`, `30 s, 5 min, ...`, `128 times 4^k, 8 buckets`) into numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.shared_data import shared_dir

_UNITS = {"s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "KiB": 1024, "MiB": 1 << 20}


def metrics_md() -> Path:
    return shared_dir() / "METRICS.md"


def _expand(cell: str) -> list[str]:
    parts = [p.strip().strip("`") for p in cell.split("/")]
    first = parts[0]
    names = [first]
    for part in parts[1:]:
        if not part.startswith("_"):
            names.append(part)
            continue
        # `_with_failure_total` after `modelmesh_models_loaded_total`: the stem is what precedes
        # the first name's one varying segment before the suffix both share.
        head, tail = first.split("_"), part.strip("_").split("_")
        shared = 0
        while shared < min(len(head), len(tail)) and head[-1 - shared] == tail[-1 - shared]:
            shared += 1
        stem = head[: len(head) - shared - 1]
        names.append("_".join(stem) + part)
    return names


def metric_table(text: str | None = None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name: (prometheus type, labels)} from the `## Names` table."""
    text = text if text is not None else metrics_md().read_text()
    section = text.split("## Names", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("name", "") or set(cells[0]) <= {"-"}:
            continue
        kind = cells[1].split()[0]
        labels = tuple(label.strip() for label in cells[2].split(",") if label.strip())
        for name in _expand(cells[0]):
            table[name] = (kind, labels)
    return table


def _number(token: str) -> float:
    match = re.fullmatch(r"([\d.]+)\s*([A-Za-z]*)", token.strip())
    if not match:
        raise ValueError(f"not a bucket bound: {token!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * _UNITS[unit] if unit else value


def buckets(text: str | None = None) -> dict[str, tuple[float, ...]]:
    """{"timings": (...), "age at eviction": (...), "model size": (...), "message size": (...)}."""
    text = text if text is not None else metrics_md().read_text()
    section = text.split("## Buckets", 1)[1].split("\n## ", 1)[0]
    found: dict[str, tuple[float, ...]] = {}
    for line in section.splitlines():
        match = re.match(r"- ([a-z ]+?) \((?:ms|bytes)\): (.*)", line.strip())
        if not match:
            continue
        name, spec = match.group(1), match.group(2)
        series = re.match(r"([\d.]+\s*[A-Za-z]*) times 4\^k, (\d+) buckets", spec)
        if series:
            start = _number(series.group(1))
            found[name] = tuple(start * 4 ** k for k in range(int(series.group(2))))
        else:
            found[name] = tuple(_number(token) for token in spec.split(","))
    return found
