"""Text the fabric commands print (pure: messages in, strings out; no gRPC calls, no I/O).

Plain aligned columns, no colours, so output reads the same in a terminal, a log and a
test. Sizes are binary units (KiB, MiB, GiB); ages are the largest two units.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

import numpy as np

from mesh.cli.tensors import to_jsonable
from protos import mesh_admin_pb2 as admin
from protos import model_mesh_pb2 as mm

__all__ = ["age", "bar", "model_status_text", "model_table", "outputs_text", "size", "state_name", "table",
           "top_frame", "vmodel_status_text"]

_S = mm.ModelStatusInfo
_V = mm.VModelStatusInfo


def state_name(value: int) -> str:
    try:
        return _S.ModelStatus.Name(value)
    except ValueError:
        return f"UNKNOWN({value})"


def size(n: int) -> str:
    """Bytes in binary units: '0 B', '512 B', '16.0 KiB', '1.5 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(seconds: float) -> str:
    """'-' for 0 (nothing there), else '45s', '12m05s', '3h05m', '2d04h'."""
    if seconds <= 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def bar(used: int, loading: int, capacity: int, width: int = 30) -> str:
    """'[#####++........]': '#' used, '+' reserved by loads in progress, '.' free (over capacity: all '#', '!' at the end)."""
    if capacity <= 0:
        return "[" + "?" * width + "]"
    cells_used = min(width, round(width * used / capacity))
    if used > 0 and cells_used == 0:
        cells_used = 1  # memory in use is always visible, however small
    cells_loading = min(width - cells_used, round(width * loading / capacity))
    if loading > 0 and cells_loading == 0 and cells_used < width:
        cells_loading = 1  # a load in progress is always visible
    inside = "#" * cells_used + "+" * cells_loading + "." * (width - cells_used - cells_loading)
    if used + loading > capacity:
        inside = inside[:-1] + "!"
    return f"[{inside}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _when(ms: int) -> str:
    if ms <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def model_status_text(model_id: str, info: mm.ModelStatusInfo, addresses: Mapping[str, str] | None = None) -> str:
    """`meshserve status`: state, each copy with its instance (and address), the failures."""
    addresses = addresses or {}
    lines = [f"model:   {model_id}", f"state:   {state_name(info.status)}"]
    if info.modelCopyInfos:
        lines.append("copies:")
        rows = []
        for copy in info.modelCopyInfos:
            where = copy.location + (f" ({addresses[copy.location]})" if copy.location in addresses else "")
            label = "last used" if copy.copyStatus == _S.LOADED else "since"
            rows.append(("  " + where, state_name(copy.copyStatus), f"{label} {_when(copy.time)}"))
        lines.append(table(("", "", ""), rows).split("\n", 1)[1])
    else:
        lines.append("copies:  none")
    if info.errors:
        lines.append(f"last failure: {info.errors[0]}")
        lines += [f"              {error}" for error in info.errors[1:]]
    return "\n".join(lines)


def model_table(response: admin.ListModelsResponse) -> str:
    """`meshserve list`: one row per model."""
    rows = []
    for m in response.models:
        loaded = [c.instance_id for c in m.copies if c.status == _S.LOADED]
        loading = [c.instance_id + "(loading)" for c in m.copies if c.status == _S.LOADING]
        rows.append((m.id, m.type, state_name(m.state), ",".join(loaded + loading) or "-",
                     size(m.size_bytes) if m.size_bytes else "-", f"{m.request_rate_per_min:.1f}",
                     ",".join(m.vmodels) or "-", m.last_failure or "-"))
    text = table(("MODEL", "TYPE", "STATE", "COPIES", "SIZE", "REQ/MIN", "VMODELS", "LAST FAILURE"), rows)
    if not response.models:
        text += "\n(no models registered)"
    if not response.in_sync:
        text += "\n(the server's view of etcd may be stale: it cannot reach etcd right now)"
    return text


def vmodel_status_text(vmodel_id: str, info: mm.VModelStatusInfo) -> str:
    """`meshserve vmodel status`/`set`: the alias, its state, active and target models."""
    lines = [f"vmodel:  {vmodel_id}", f"state:   {_V.VModelStatus.Name(info.status)}",
             f"active:  {info.activeModelId} ({state_name(info.activeModelStatus.status)})"]
    if info.targetModelId and info.targetModelId != info.activeModelId:
        lines.append(f"target:  {info.targetModelId} ({state_name(info.targetModelStatus.status)})")
    if info.owner:
        lines.append(f"owner:   {info.owner}")
    errors = list(info.targetModelStatus.errors) or list(info.activeModelStatus.errors)
    if errors:
        lines.append(f"last failure: {errors[0]}")
    return "\n".join(lines)


def top_frame(status: admin.FabricStatus, address: str, *, bar_width: int = 30) -> str:
    """One frame of `meshserve top`."""
    loaded_copies = sum(i.models_total - i.loads_in_progress for i in status.instances)
    head = [
        f"meshserve top  {address}  {_when(status.time_ms)}",
        f"instances {len(status.instances)}  memory {size(status.used_bytes)} / {size(status.capacity_bytes)}  "
        f"global LRU age {age(status.global_lru_age_seconds)}",
        f"models registered {status.models_registered}  loaded {status.models_loaded}  "
        f"loading {status.models_loading}  failed {status.models_failed}  copies {loaded_copies}  "
        f"vmodels {status.vmodels}",
    ]
    if not status.in_sync:
        head.append("(the server's view of etcd may be stale: it cannot reach etcd right now)")
    rows = []
    for i in status.instances:
        share = (i.used_bytes + i.loading_bytes) / i.capacity_bytes * 100 if i.capacity_bytes else 0.0
        rows.append((i.id + (" (draining)" if i.shutting_down else ""), i.zone or "-",
                     f"{bar(i.used_bytes, i.loading_bytes, i.capacity_bytes, bar_width)} {share:3.0f}%",
                     f"{size(i.used_bytes)} / {size(i.capacity_bytes)}", str(i.models_total),
                     str(i.loads_in_progress), f"{i.request_rate_per_min:.1f}", age(i.lru_age_seconds)))
    body = table(("INSTANCE", "ZONE", "MEMORY (# used, + loading)", "USED / CAPACITY", "MODELS", "LOADING",
                  "REQ/MIN", "LRU AGE"), rows)
    if not status.instances:
        body += "\n(no instances in the fabric)"
    return "\n".join([*head, "", body])


def outputs_text(outputs: Mapping[str, tuple[str, np.ndarray]]) -> str:
    """`meshserve infer`: one line per output, 'name DATATYPE [shape]: values'."""
    return "\n".join(f"{name} {datatype} {list(array.shape)}: {json.dumps(to_jsonable(array))}"
                     for name, (datatype, array) in outputs.items())
