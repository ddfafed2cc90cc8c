#!/usr/bin/env python3
"""Turns benches/compare.sh's results.jsonl into summary.json and summary.md (medians over rounds,
certgate/peer ratios measured side by side in the same run, the issue's targets)."""

import argparse
import datetime
import json
import os
import statistics
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("out")
ap.add_argument("--command", default="benches/compare.sh")
ap.add_argument("--peers", default="certgate nginx haproxy")
args = ap.parse_args()

rows = [json.loads(l) for l in open(args.results) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["peer"], r["test"])].append(r)
peers = args.peers.split()
others = [p for p in peers if p != "certgate"]


def med(peer, test, f):
    vals = [f(r["result"]) for r in by.get((peer, test), [])]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def rps(r):
    return r["rps"]


def p50(r):
    return r["latency_ms"]["p50"]


def p99(r):
    return r["latency_ms"]["p99"]


def cpu(r):
    return r["watched_cpu_us_per_req"]


def syscpu(r):
    """The kernel's part of the gateway's CPU per request (absent in results older than the field)."""
    return r.get("watched_sys_us_per_req")


def util(r):
    return r["watched_cpu_util"] * 100


def lgutil(r):
    return r["loadgen_cpu_util"] * 100


def core1(r):
    """The whole second core (load generator, upstream and anything else on it), from /proc/stat."""
    busy = r.get("cores_busy", [])
    return busy[1] * 100 if len(busy) > 1 else None


def ceiling(r):
    """The rate at which the second core would be fully busy if its cost per request stayed the same:
    roughly the most any gateway could reach with this load generator and upstream (that cost falls
    somewhat as the rate rises)."""
    busy = core1(r)
    return r["rps"] * 100 / busy if busy else None


def rss(r):
    return r["watched_rss_kb_peak"] / 1024


def errors(r):
    return sum(r["errors"].values())


# (label, test, extractor, unit, better: "higher"|"lower")
METRICS = [
    ("keep-alive h1 64c req/s", "ka-h1", rps, "req/s", "higher"),
    ("keep-alive h1 p50", "ka-h1", p50, "ms", "lower"),
    ("keep-alive h1 p99", "ka-h1", p99, "ms", "lower"),
    ("keep-alive h1 proxy CPU/req", "ka-h1", cpu, "µs", "lower"),
    ("keep-alive h1 proxy CPU/req in the kernel", "ka-h1", syscpu, "µs", None),
    ("keep-alive h1 proxy core busy", "ka-h1", util, "%", None),
    ("keep-alive h1 loadgen core busy", "ka-h1", lgutil, "%", None),
    ("keep-alive h1 loadgen+upstream core busy", "ka-h1", core1, "%", None),
    ("keep-alive h1 second core's ceiling (req/s ÷ its busy share)", "ka-h1", ceiling, "req/s", None),
    ("keep-alive h1 peak RSS", "ka-h1", rss, "MiB", "lower"),
    ("keep-alive h2 64c req/s", "ka-h2", rps, "req/s", "higher"),
    ("keep-alive h2 p99", "ka-h2", p99, "ms", "lower"),
    ("keep-alive h2 proxy CPU/req", "ka-h2", cpu, "µs", "lower"),
    ("keep-alive h2 proxy CPU/req in the kernel", "ka-h2", syscpu, "µs", None),
    ("keep-alive h2 loadgen+upstream core busy", "ka-h2", core1, "%", None),
    ("keep-alive h2 second core's ceiling (req/s ÷ its busy share)", "ka-h2", ceiling, "req/s", None),
    ("handshakes/s TLS1.3 ECDSA", "hs-ecdsa", rps, "/s", "higher"),
    ("handshake p99 ECDSA", "hs-ecdsa", p99, "ms", "lower"),
    ("handshake proxy CPU ECDSA", "hs-ecdsa", cpu, "µs", "lower"),
    ("handshake loadgen core busy", "hs-ecdsa", lgutil, "%", None),
    ("handshakes/s TLS1.3 RSA-2048", "hs-rsa", rps, "/s", "higher"),
    ("handshakes/s CRL 0 entries", "hs-crl0", rps, "/s", "higher"),
    ("handshakes/s CRL 10k", "hs-crl10k", rps, "/s", "higher"),
    ("handshakes/s CRL 1M", "hs-crl1m", rps, "/s", "higher"),
    ("handshake proxy CPU CRL 1M", "hs-crl1m", cpu, "µs", "lower"),
    ("storm (1M CRL): time to serve every new connection", "storm", lambda r: r["storm_secs"], "s", "lower"),
    ("storm: new connections failed or unfinished", "storm",
     lambda r: r["storm_failed"] + r["storm_unfinished"], "n", "lower"),
    ("storm: keep-alive p99 before the storm", "storm", lambda r: r["keepalive_before"]["latency_ms"]["p99"],
     "ms", "lower"),
    ("storm: keep-alive p99 during the storm", "storm", lambda r: r["keepalive_during"]["latency_ms"]["p99"],
     "ms", "lower"),
    ("storm: keep-alive p99 during ÷ before", "storm",
     lambda r: (r["keepalive_during"]["latency_ms"]["p99"] / r["keepalive_before"]["latency_ms"]["p99"])
     if r["keepalive_before"]["latency_ms"]["p99"] else None, "×", "lower"),
    ("storm: keep-alive req/s during the storm", "storm", lambda r: r["keepalive_during"]["rps"], "req/s",
     "higher"),
    ("storm: peak RSS", "storm", lambda r: r["watched_rss_kb_peak"] / 1024, "MiB", "lower"),
]


def start_secs(peer, variant_test):
    vals = [r["start_secs"] for r in by.get((peer, variant_test), [])]
    return statistics.median(vals) if vals else None


def idle(peer, key):
    rs = by.get((peer, "idle"), [])
    return rs[0]["result"].get(key) if rs else None


def fmt(v, unit):
    if v is None:
        return "–"
    if unit in ("req/s", "/s"):
        return f"{v:,.0f}"
    if unit in ("B", "n"):
        return f"{v:,.0f}"
    if unit == "%":
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


table = []
summary = {"metrics": {}, "ratios": {}}
for label, test, f, unit, better in METRICS:
    vals = {p: med(p, test, f) for p in peers}
    errs = {p: med(p, test, errors) for p in peers}
    ratios = {
        o: (vals["certgate"] / vals[o]) if vals.get("certgate") and vals.get(o) else None
        for o in others
    }
    table.append((f"{label} ({unit})", [fmt(vals[p], unit) for p in peers], ratios, errs))
    summary["metrics"][label] = {"unit": unit, "test": test, "median": vals, "errors": errs,
                                 "rounds": {p: [f(r["result"]) for r in by.get((p, test), [])] for p in peers}}
    summary["ratios"][label] = ratios

# Memory per idle connection.
idle_rows = [
    ("idle conns held", "connections_held", "n"),
    ("RSS per idle connection (B)", "rss_bytes_per_conn", "B"),
    ("PSS per idle connection (B)", "pss_bytes_per_conn", "B"),
    ("RSS with idle conns (MiB)", "rss_kb_after", "MiB"),
]
for label, key, unit in idle_rows:
    vals = {p: idle(p, key) for p in peers}
    if unit == "MiB":
        vals = {p: (v / 1024 if v is not None else None) for p, v in vals.items()}
    ratios = {o: (vals["certgate"] / vals[o]) if vals.get("certgate") and vals.get(o) else None for o in others}
    table.append((label, [fmt(vals[p], unit) if unit != "n" else str(vals[p]) for p in peers], ratios, {}))
    summary["metrics"][label] = {"median": vals}
    summary["ratios"][label] = ratios

up = med("upstream", "ka-h1", rps)
summary["upstream_alone_rps"] = up
crl_self = {p: (med(p, "hs-crl1m", rps) / med(p, "hs-ecdsa", rps))
            if med(p, "hs-crl1m", rps) and med(p, "hs-ecdsa", rps) else None for p in peers}
summary["crl1m_over_nocrl"] = crl_self
# The same ratio from CPU per handshake (no CRL ÷ 1M CRL): less sensitive to a busy machine.
crl_cpu = {p: (med(p, "hs-ecdsa", cpu) / med(p, "hs-crl1m", cpu))
           if med(p, "hs-crl1m", cpu) and med(p, "hs-ecdsa", cpu) else None for p in peers}
summary["crl1m_over_nocrl_by_cpu"] = crl_cpu
# And round by round: each round's 1M-CRL rate ÷ the same peer's no-CRL rate in that round (seconds
# apart), so a drift of the machine's speed between rounds cancels out; against the 0-entry CRL too,
# which isolates what the entries themselves cost from having a CRL configured at all.
def within_rounds(peer, test, base, f):
    mine = {r["round"]: f(r["result"]) for r in by.get((peer, test), [])}
    ref = {r["round"]: f(r["result"]) for r in by.get((peer, base), [])}
    return [mine[k] / ref[k] for k in sorted(mine) if mine[k] and ref.get(k)]


crl_rounds = {p: within_rounds(p, "hs-crl1m", "hs-ecdsa", rps) for p in peers}
crl_rounds_vs0 = {p: within_rounds(p, "hs-crl1m", "hs-crl0", rps) for p in peers}
summary["crl1m_over_nocrl_rounds"] = crl_rounds
summary["crl1m_over_crl0_rounds"] = crl_rounds_vs0
summary["startup_secs_crl1m"] = {p: start_secs(p, "hs-crl1m") for p in peers}
summary["checks"] = [r for r in rows if r["test"].startswith("check-") or r["test"] == "server-full-handshakes"]


def ratio(label, o):
    v = summary["ratios"].get(label, {}).get(o)
    return v


def verdict(ok):
    return "met" if ok else "NOT met"


targets = []
if "nginx" in others:
    r = ratio("keep-alive h1 64c req/s", "nginx")
    targets.append(("keep-alive req/s ≥ 1.2× nginx", r, r is not None and r >= 1.2))
if "haproxy" in others:
    r = ratio("keep-alive h1 64c req/s", "haproxy")
    targets.append(("keep-alive req/s ≥ 1.0× HAProxy", r, r is not None and r >= 1.0))
if "nginx-minlog" in others:
    r = ratio("keep-alive h1 64c req/s", "nginx-minlog")
    targets.append(("(reference) keep-alive req/s ≥ 1.2× nginx-minlog, which skips the audit line", r,
                    r is not None and r >= 1.2))
if "nginx-min" in others:
    r = ratio("keep-alive h1 64c req/s", "nginx-min")
    targets.append(("(minimum job) keep-alive req/s ≥ 1.2× nginx-min: no log, no identity headers", r,
                    r is not None and r >= 1.2))
# HTTP/2 keep-alive: (label, peer, goal), and each rate goal's rate, for the layout's bound below.
h2_goals = [(f"HTTP/2 keep-alive req/s ≥ 1.3× {o}", o, 1.3) for o in ("nginx", "haproxy") if o in others]
if "nginx-min" in others:
    h2_goals.append(("(minimum job) HTTP/2 keep-alive req/s ≥ 1.1× nginx-min", "nginx-min", 1.1))
for label, o, goal in h2_goals:
    r = ratio("keep-alive h2 64c req/s", o)
    targets.append((label, r, r is not None and r >= goal))
rate_goals = [("HTTP/1.1", "ka-h1", "nginx-min", 1.2)] if "nginx-min" in others else []
rate_goals += [("HTTP/2", "ka-h2", o, goal) for _, o, goal in h2_goals]
if "nginx" in others and by.get(("certgate", "storm")):
    r = ratio("storm (1M CRL): time to serve every new connection", "nginx")
    targets.append(("storm: time to serve every new connection ≤ 0.5× nginx", r, r is not None and r <= 0.5))
    r = ratio("storm: keep-alive p99 during the storm", "nginx")
    targets.append(("storm: keep-alive p99 during the storm ≤ nginx", r, r is not None and r <= 1.0))
    r = med("certgate", "storm", lambda x: x["storm_failed"] + x["storm_unfinished"])
    targets.append(("storm: every new connection served (0 failed or unfinished)", r, r == 0))
for o in others:
    r = ratio("keep-alive h1 p99", o)
    targets.append((f"keep-alive p99 no worse than {o}", r, r is not None and r <= 1.0))
if "nginx" in others:
    r = ratio("handshakes/s TLS1.3 ECDSA", "nginx")
    targets.append(("full handshakes/s ≥ 2× nginx (ECDSA)", r, r is not None and r >= 2.0))
    r = ratio("keep-alive h1 peak RSS", "nginx")
    targets.append(("RSS under keep-alive ≤ nginx", r, r is not None and r <= 1.0))
r = crl_self.get("certgate")
targets.append(("certgate handshakes/s with 1M CRL ≥ 0.95× no CRL", r, r is not None and r >= 0.95))
r = statistics.median(crl_rounds["certgate"]) if crl_rounds.get("certgate") else None
targets.append(("certgate handshakes/s with 1M CRL ≥ 0.95× no CRL, median of rounds", r,
                r is not None and r >= 0.95))
summary["targets"] = [{"target": t, "ratio": r, "met": ok} for t, r, ok in targets]

cpu_model = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
machine = f"{os.cpu_count()} cores, {cpu_model}"
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
summary.update({"date": date, "machine": machine, "command": args.command})

md = []
md.append(f"Date: {date} · machine: {machine} · command: `{args.command}`\n")
md.append("Medians over rounds; ratios are certgate ÷ peer from the same run (for latency, CPU and memory "
          "lower is better, so a ratio < 1 favours certgate).\n")
if "nginx-min" in peers:
    md.append("nginx-min is nginx doing the least it can (access_log off, no identity or forwarding headers "
              "upstream): not the same job, keep-alive rows only, the floor to compare with.\n")
if "nginx-minlog" in peers:
    md.append("nginx and HAProxy write the same audit line per request as certgate (partner, certificate, "
              "route, status, bytes, timings); nginx-minlog is nginx with a minimal access log instead, "
              "which is not the same job: it runs the keep-alive rows only, to show what the line costs.\n")
head = "| metric | " + " | ".join(peers) + " | " + " | ".join(f"certgate/{o}" for o in others) + " |"
md.append(head)
md.append("|" + "---|" * (1 + len(peers) + len(others)))
for label, vals, ratios, errs in table:
    bad = [p for p, e in errs.items() if e]
    note = f" ⚠ errors: {', '.join(bad)}" if bad else ""
    md.append(f"| {label}{note} | " + " | ".join(vals) + " | "
              + " | ".join("–" if ratios[o] is None else f"{ratios[o]:.2f}×" for o in others) + " |")
md.append("")
md.append(f"Upstream alone (plain HTTP keep-alive, 64 conns, the ceiling): {fmt(up, 'req/s')} req/s.  ")
md.append("Handshakes/s with the 1M-entry CRL ÷ without a CRL: "
          + ", ".join(f"{p} {v:.2f}×" if v else f"{p} –" for p, v in crl_self.items()) + ".  ")
md.append("The same from CPU per handshake (no-CRL µs ÷ 1M-CRL µs): "
          + ", ".join(f"{p} {v:.2f}×" if v else f"{p} –" for p, v in crl_cpu.items()) + ".  ")
def spread(v):
    return f"{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f})" if v else "–"


md.append("Round by round (1M-CRL rate ÷ the same round's rate), median (range): without a CRL "
          + ", ".join(f"{p} {spread(v)}" for p, v in crl_rounds.items())
          + "; with the 0-entry CRL " + ", ".join(f"{p} {spread(v)}" for p, v in crl_rounds_vs0.items())
          + ".  ")
md.append("Start-up with the 1M-entry CRL (s, to accepting): "
          + ", ".join(f"{p} {v}" for p, v in summary["startup_secs_crl1m"].items()) + ".\n")
md.append("| target | ratio | |")
md.append("|---|---|---|")
for t, r, ok in targets:
    md.append(f"| {t} | {'–' if r is None else f'{r:.2f}×'} | {verdict(ok)} |")
md.append("")
# The load generator and the upstream share the second core: its ceiling in a peer's rounds roughly
# bounds the ratio any gateway could show against that peer on this machine.
bounds = []
for o in [p for p in others if p.startswith("nginx")]:
    rate, top = med(o, "ka-h1", rps), med(o, "ka-h1", ceiling)
    if rate and top:
        bounds.append(f"{o}: {top:,.0f} req/s, {top / rate:.2f}× its rate")
        summary.setdefault("second_core_ceiling_over_rate", {})[o] = top / rate
if bounds:
    md.append("The second core (load generator and upstream) would be fully busy at: " + "; ".join(bounds)
              + ". That is roughly the most any gateway could show against that peer on this layout. Rough, "
              "because the second core's cost per request falls as the rate rises (more work per wake-up): "
              "compare its busy share and the rates across peers.\n")
# Each rate goal against certgate's own second-core ceiling: a goal above it cannot be shown on this
# layout by any gateway relaying certgate's headers, whatever its own CPU per request.
reach = []
for proto, test, o, goal in rate_goals:
    theirs, top = med(o, test, rps), med("certgate", test, ceiling)
    if theirs and top:
        reach.append(f"{proto} {goal}× {o} needs {goal * theirs:,.0f} req/s, the ceiling is {top:,.0f}")
        summary.setdefault("goal_rate_over_certgate_ceiling", {})[f"{test} {goal}x {o}"] = goal * theirs / top
if reach:
    md.append("With certgate's traffic (its identity headers make each upstream request larger), the second "
              "core is fully busy at its ceiling: " + "; ".join(reach) + ".\n")
# Ratios of medians compare each peer's typical round; the machine's speed also drifts from minute to
# minute, so pair each certgate round with the same round's peer (they run seconds apart) and take the
# median of those ratios: a drift that lasts a round then moves both sides of its ratio.
def paired(test, f, o):
    mine = {r["round"]: f(r["result"]) for r in by.get(("certgate", test), [])}
    theirs = {r["round"]: f(r["result"]) for r in by.get((o, test), [])}
    return [mine[k] / theirs[k] for k in sorted(mine) if mine[k] and theirs.get(k)]


pairs = []
for o in others:
    speed, cost = paired("ka-h1", rps, o), paired("ka-h1", cpu, o)
    if speed and cost:
        pairs.append((o, speed, cost))
        summary.setdefault("paired_rounds_ka_h1", {})[o] = {"rps": speed, "cpu_us_per_req": cost}
if pairs:
    md.append("Keep-alive HTTP/1.1, certgate ÷ peer within each round, then the median (and range) of those "
              "round-by-round ratios:\n")
    md.append("| peer | rounds | req/s | CPU per request |")
    md.append("|---|---|---|---|")
    for o, speed, cost in pairs:
        md.append(f"| {o} | {len(speed)} | {statistics.median(speed):.2f}× ({min(speed):.2f}–{max(speed):.2f}) "
                  f"| {statistics.median(cost):.2f}× ({min(cost):.2f}–{max(cost):.2f}) |")
    md.append("")
md.append("Correctness checks and server-side full-handshake confirmation:\n")
for c in summary["checks"]:
    if c["round"] == 1:
        md.append(f"- {c['peer']} {c['test']}: `{json.dumps(c['result'])}`")

open(os.path.join(args.out, "summary.json"), "w").write(json.dumps(summary, indent=2))
open(os.path.join(args.out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
