"""The reference workload a results file timed (`protocol["reference_workload"]`, see `xprune.bench.drift`):
relative latencies (model / reference) compare only between runs that timed the same one. Both gate modes check
it, against one baseline (`decision.py`) and against a history of runs (`history.py`)."""

from __future__ import annotations


def reference_workload(doc: dict):
    """The description of the reference workload a results document timed; None when it timed none."""
    protocol = doc.get("protocol")
    return protocol.get("reference_workload") if isinstance(protocol, dict) else None


def workload_identity(desc) -> object:
    # thread count follows the model's setting and is part of the model's row, not of the workload's identity
    return {k: v for k, v in desc.items() if k != "threads"} if isinstance(desc, dict) else desc


def workloads_differ(a, b) -> bool:
    """Two described workloads that are not the same one; a side that describes none has nothing to compare."""
    return a is not None and b is not None and workload_identity(a) != workload_identity(b)


def workload_name(desc) -> str:
    return f"{desc.get('name')} v{desc.get('version')}" if isinstance(desc, dict) else str(desc)
