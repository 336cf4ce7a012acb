"""
The live status page (C{GET /debug/rpc}), its JSON (C{GET /debug/rpc.json})
and the Prometheus scrape (C{GET /metrics}), served on the daemon's port by
L{rpcd.server.httpserver}.

The page lists, after Go's C{net/rpc/debug.go}, each service the request may
call with its methods (signature, first doc line, calls); when the daemon
keeps figures (C{[http] metrics = true}, L{rpcd.server.metrics}) each method also
shows its errors, calls running and latency percentiles, and the page shows
the connections open by wire protocol.  A small script fetches the JSON
every two seconds and redraws the figures (without scripts, the page
reloads itself every five).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpcd.server.metrics import Metrics
    from rpcd.core.service import ServiceRegistry
    from rpcd.core.session import Session

DEBUG_PATH = "/debug/rpc"
DEBUG_JSON_PATH = "/debug/rpc.json"
METRICS_PATH = "/metrics"

#: The Prometheus text exposition format's content type.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_QUANTILES = (0.5, 0.9, 0.99)


def status(registry: ServiceRegistry, session: Session | None = None,
           metrics: Metrics | None = None) -> dict[str, Any]:
    """
    What the status page shows, as JSON-ready data.

    @param registry: the daemon's services.
    @param session: list only the services this session may call; None
        lists them all.
    @param metrics: the daemon's figures, or None when it keeps none.
    @return: C{{"services": [{"name", "methods": [{"name", "signature",
        "doc", "calls", ...}]}], "connections": {protocol: open},
        "metrics": bool}}; with figures, each method also has C{errors},
        C{running} and C{p50_ms}, C{p90_ms}, C{p99_ms} (None before a call).
    """
    counts = registry.call_counts
    services = []
    for spec in registry.services() if session is None else registry.services_for(session):
        methods = []
        for method in sorted(spec.methods.values(), key=lambda m: m.name):
            full = f"{spec.name}.{method.name}"
            row: dict[str, Any] = {"name": full, "signature": f"{spec.name}.{method.signature}",
                                   "doc": method.doc, "calls": counts.get(full, 0)}
            if metrics is not None:
                stats = metrics.methods.get(full)
                if stats is None:
                    row.update(errors=0, running=0, p50_ms=None, p90_ms=None, p99_ms=None)
                else:
                    p50, p90, p99 = (None if p is None else round(p * 1000, 3)
                                     for p in stats.percentiles(*_QUANTILES))
                    row.update(calls=max(row["calls"], stats.calls), errors=stats.errors,
                               running=stats.running, p50_ms=p50, p90_ms=p90, p99_ms=p99)
            methods.append(row)
        services.append({"name": spec.name, "methods": methods})
    return {"services": services, "metrics": metrics is not None,
            "connections": {} if metrics is None else metrics.connections()}


def status_json(registry: ServiceRegistry, session: Session | None = None,
                metrics: Metrics | None = None) -> bytes:
    """
    @return: L{status} as UTF-8 JSON.
    """
    return json.dumps(status(registry, session, metrics), separators=(",", ":")).encode("utf-8")


_HEAD = """<html>
<head><meta charset="utf-8"><title>Services</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
body { font-family: sans-serif; margin: 1em 2em; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.err { color: #b00; }
</style>
</head>
<body>
<h1>Services</h1>
"""

_SCRIPT = """<p id="updated">figures as served</p>
<script>
"use strict";
function ms(v) { return v === null ? "-" : v.toFixed(v < 10 ? 3 : 1) + " ms"; }
function fill(data) {
  for (const service of data.services) {
    for (const m of service.methods) {
      const row = document.querySelector('tr[data-method="' + CSS.escape(m.name) + '"]');
      if (!row) { continue; }
      const set = (cls, text) => { const c = row.querySelector("td." + cls); if (c) c.textContent = text; };
      row.cells[1].textContent = String(m.calls);
      if (data.metrics) {
        set("errors", String(m.errors)); set("running", String(m.running));
        set("p50", ms(m.p50_ms)); set("p90", ms(m.p90_ms)); set("p99", ms(m.p99_ms));
      }
    }
  }
  const conns = document.getElementById("connections");
  if (conns && data.metrics) {
    conns.replaceChildren();
    for (const [protocol, open] of Object.entries(data.connections)) {
      const tr = conns.insertRow(); tr.dataset.protocol = protocol;
      tr.insertCell().textContent = protocol;
      const c = tr.insertCell(); c.className = "n"; c.textContent = String(open);
    }
  }
  document.getElementById("updated").textContent =
    "live: updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const answer = await fetch("/debug/rpc.json", {cache: "no-store"});
    if (answer.ok) { fill(await answer.json()); }
  } catch (e) {
    document.getElementById("updated").textContent = "not updated: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
"""

_TAIL = """</body>
</html>
"""


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms")


def page(data: dict[str, Any]) -> str:
    """
    The status page's HTML.  Every name and text is HTML-escaped.

    @param data: from L{status}.
    @return: the HTML text.
    """
    figures = data["metrics"]
    out = [_HEAD]
    if figures:
        out.append("<h2>Connections</h2>\n<table><thead><tr><th align=left>Protocol</th>"
                   "<th>Open</th></tr></thead>\n<tbody id=\"connections\">\n")
        for protocol, count in data["connections"].items():
            out.append(f"<tr data-protocol=\"{html.escape(protocol)}\"><td>{html.escape(protocol)}"
                       f"</td><td class=n>{count}</td></tr>\n")
        out.append("</tbody></table>\n")
    for service in data["services"]:
        name = html.escape(service["name"])
        out.append(f"<hr>\nService {name}\n<hr>\n<table>\n"
                   "<tr><th align=center>Method</th><th align=center>Calls</th>")
        if figures:
            out.append("<th>Errors</th><th>Running</th><th>p50</th><th>p90</th><th>p99</th>")
        out.append("<th align=left>Description</th></tr>\n")
        for m in service["methods"]:
            row = (f"<tr data-method=\"{html.escape(m['name'])}\"><td align=left><code>"
                   f"{html.escape(m['signature'])}</code></td>")
            if figures:
                errors = " err" if m["errors"] else ""
                row += (f"<td class=n>{m['calls']}</td>"
                        f"<td class=\"n errors{errors}\">{m['errors']}</td>"
                        f"<td class=\"n running\">{m['running']}</td>"
                        f"<td class=\"n p50\">{_ms(m['p50_ms'])}</td>"
                        f"<td class=\"n p90\">{_ms(m['p90_ms'])}</td>"
                        f"<td class=\"n p99\">{_ms(m['p99_ms'])}</td>")
            else:
                row += f"<td align=center>{m['calls']}</td>"
            out.append(f"{row}<td align=left>{html.escape(m['doc'])}</td></tr>\n")
        out.append("</table>\n")
    out.append(_SCRIPT)
    out.append(_TAIL)
    return "".join(out)


__all__ = ["DEBUG_JSON_PATH", "DEBUG_PATH", "METRICS_CONTENT_TYPE", "METRICS_PATH", "page", "status", "status_json"]
