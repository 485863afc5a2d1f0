"""The report of one run. Its keys, their order and types are defined once, in report.schema.json,
which edge-run, the eager baseline, edge-bench and the Android core's tests all read; `make_report`
builds a report in that order and refuses one that drifts from it."""

import json
from functools import cache
from pathlib import Path

import numpy as np

SCHEMA = Path(__file__).with_name("report.schema.json")


@cache
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def version() -> int:
    return schema()["properties"]["report_version"]["const"]


def numeric_keys() -> list[str]:
    """Top-level keys holding a measured number: what edge-bench reduces over repeats."""
    return [k for k, p in schema()["properties"].items() if p["type"] in ("number", "integer") and k != "report_version"]


def latency_summary(step_ns) -> dict:
    """token_latency_ms: p50 / p95 / max of per-step times given in ns (zeros when there is none)."""
    lat = np.asarray(step_ns, dtype=np.float64) / 1e6
    if not len(lat):
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max())}


def problems(report: dict, spec: dict | None = None, where: str = "") -> list[str]:
    """What is wrong with `report`, one line per problem: missing or unknown keys, keys out of the
    schema's order, values of the wrong type or version. Empty when it follows the schema."""
    spec = spec or schema()
    props = spec["properties"]
    out = [f"missing key {where}{k}" for k in props if k not in report]
    out += [f"unknown key {where}{k}" for k in report if k not in props]
    if not out and list(report) != list(props):
        out.append(f"keys of {where.rstrip('.') or 'the report'} out of order: {list(report)}")
    for k, v in report.items():
        p = props.get(k)
        if p is None:
            continue
        t = p["type"]
        ok = {"object": isinstance(v, dict), "string": isinstance(v, str), "boolean": isinstance(v, bool),
              "integer": isinstance(v, int) and not isinstance(v, bool),
              "number": isinstance(v, int | float) and not isinstance(v, bool)}[t]
        if not ok:
            out.append(f"{where}{k} should be {t}, is {v!r}")
        elif t == "object":
            out += problems(v, p, f"{where}{k}.")
        elif "const" in p and v != p["const"]:
            out.append(f"{where}{k} should be {p['const']}, is {v!r}")
    return out


class ReportError(ValueError):
    """A report that does not follow report.schema.json: a bug in its writer, or a report of another version."""


def make_report(**values) -> dict:
    """The report with `values` in the schema's order, report_version first; raises on any drift."""
    report = {"report_version": version()}
    report |= {k: values[k] for k in schema()["properties"] if k in values}
    report |= {k: v for k, v in values.items() if k not in report}  # unknown keys stay, to be reported
    check(report)
    return report


def check(report: dict) -> dict:
    if found := problems(report):
        raise ReportError("report does not follow report.schema.json: " + "; ".join(found))
    return report
