#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into bench/RESULTS.md.

Usage: report.py OUT_DIR RESULTS_MD

OUT_DIR holds what run.sh left: machine.txt ("key: value" lines),
manifest.tsv (per run: id, exit status, seconds, server alive, CPU seconds
of the machine, the tool, the server and the rest, command),
ID.json (the tool's one JSON object, or nothing if it failed early),
ID.err, commands.sh and haproxy.cfg. Python 3 standard library only.
"""

import json
import math
import os
import sys

# Reference figures from the issue (another machine; for context only).
REFERENCE = [
    ("original Qt server", "~30 CPU-s/GiB (flood)", "37-71 CPU-µs per frame at 10 000 paced frames/s", "7-9 KiB RSS per idle connection"),
    ("HAProxy (mode tcp)", "~0.7-0.9 CPU-s/GiB (flood)", "12-17 CPU-µs per write (paced)", "-"),
]

# Other processes using more CPUs than this during a run mark it as contended.
CONTENDED_CORES = 0.1

FLOOD_1K = [(framing, pairs) for framing in ("seed", "framed") for pairs in (1, 100)]
TARGETS = ("relay", "direct", "pipe")


def load(out_dir):
    machine = {}
    with open(os.path.join(out_dir, "machine.txt"), encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.rstrip("\n").partition(": ")
            if key:
                machine[key] = value
    runs = {}
    order = []
    with open(os.path.join(out_dir, "manifest.tsv"), encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t", 8)
            if len(fields) != 9:
                continue
            run_id, status, seconds, alive, busy, tool, server, other, command = fields
            result = None
            path = os.path.join(out_dir, run_id + ".json")
            try:
                with open(path, encoding="utf-8") as result_file:
                    text = result_file.read().strip()
                if text:
                    result = json.loads(text.splitlines()[-1])
            except (OSError, ValueError):
                result = None
            try:
                with open(os.path.join(out_dir, run_id + ".err"), encoding="utf-8", errors="replace") as err_file:
                    stderr = err_file.read().strip()
            except OSError:
                stderr = ""
            runs[run_id] = {
                "id": run_id,
                "status": int(status),
                "seconds": float(seconds),
                "alive": alive == "yes",
                "machine_cpu": float(busy),
                "tool_cpu": float(tool),
                "server_cpu": float(server),
                "other_cpu": float(other),
                "command": command,
                "result": result,
                "stderr": stderr,
            }
            order.append(run_id)
    return machine, runs, order


def read_text(out_dir, name):
    try:
        with open(os.path.join(out_dir, name), encoding="utf-8") as handle:
            return handle.read().rstrip("\n")
    except OSError:
        return "(missing)"


def ok(run):
    return run is not None and run["status"] == 0 and run["alive"] and run["result"] is not None


def get(run, *keys):
    """A field of a run's JSON (nested keys), or None."""
    if run is None or run["result"] is None:
        return None
    value = run["result"]
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}".replace(",", " ")
    if abs(value) >= 100:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def contended(run):
    return run is not None and run["other_cpu"] / max(run["seconds"], 0.1) > CONTENDED_CORES


def status_cell(run):
    if run is None:
        return "not run"
    if ok(run):
        return "ok ⚠" if contended(run) else "ok"
    reasons = []
    if run["status"] != 0:
        reasons.append(f"exit {run['status']}")
    if not run["alive"]:
        reasons.append("server died")
    if run["result"] is None:
        reasons.append("no JSON")
    return "**FAILED** (" + ", ".join(reasons) + ")"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


MEDIA_HEADER = [
    "scenario", "target", "delivered MiB/s", "delivered frames/s", "sent", "lost", "errors",
    "p50 µs", "p99 µs", "p99.9 µs", "max µs",
    "server CPU s", "CPU s/GiB", "CPU µs/frame", "server peak RSS KiB", "status",
]


def media_row(label, target, run):
    server = "-" if target == "direct" else None
    return [
        label,
        target + (" (HAProxy)" if target == "pipe" else ""),
        fmt(get(run, "delivered_mibps"), 1),
        fmt(get(run, "delivered_fps"), 0),
        fmt(get(run, "frames_sent")),
        fmt(get(run, "frames_lost")),
        fmt(get(run, "errors")),
        fmt(get(run, "latency_us", "p50"), 1),
        fmt(get(run, "latency_us", "p99"), 1),
        fmt(get(run, "latency_us", "p999"), 1),
        fmt(get(run, "latency_us", "max"), 1),
        server or fmt(get(run, "server", "cpu_s")),
        server or fmt(get(run, "server", "cpu_s_per_gib"), 3),
        server or fmt(get(run, "server", "cpu_us_per_frame"), 2),
        server or fmt(get(run, "server", "peak_rss_kib")),
        status_cell(run),
    ]


def verdict(passed, text, note=""):
    word = "PASS" if passed else "MISS"
    return f"- **{word}** {text}" + (f" {note}" if note else "")


def build(machine, runs, order, out_dir):
    run = runs.get
    lines = []
    add = lines.append
    failed = [runs[i] for i in order if not ok(runs[i])]

    add("# callrelay benchmark results")
    add("")
    add(f"Run on {machine.get('date', '?')} by `make bench` (bench/run.sh, then bench/report.py) "
        f"at commit `{machine.get('git', '?')}`; the suite took {machine.get('suite_seconds', '?')} s of wall time. "
        "Rerun with `make bench`: it rebuilds, reruns every scenario and rewrites this file; "
        "the raw JSON of every run stays in `bench/out/` (not committed).")
    add("")
    if failed:
        add(f"**{len(failed)} run(s) FAILED** (the tool exited non-zero or the server died): "
            + ", ".join(f"`{r['id']}`" for r in failed) + ". See *Failed runs* below.")
    else:
        add("Every run exited 0 (no errors) and no server died.")
    add("")

    add("## Machine")
    add("")
    keys = [("nproc", "CPUs (nproc)"), ("cpu", "CPU model"), ("kernel", "kernel"), ("memory", "memory"),
            ("rustc", "rustc"), ("haproxy", "HAProxy"), ("open files limit", "open files limit (ulimit -n)")]
    add(table(["", ""], [[label, f"`{machine.get(key, '?')}`"] for key, label in keys]))
    add("")
    add("The load tool, the relay and HAProxy share these CPUs; every figure is one 5 s window after 1 s of warm-up "
        "(idle: 5 s of holding), read once, so expect a few percent of noise between runs. "
        + ("The benchmark processes ran at normal priority (`BENCH_NICE=-10 make bench` raises it)."
           if machine.get("nice", "none") == "none" else f"The benchmark processes ran under `{machine.get('nice')}`."))
    add("")
    if order:
        busiest = max(order, key=lambda i: runs[i]["other_cpu"] / max(runs[i]["seconds"], 0.1))
        worst = runs[busiest]["other_cpu"] / max(runs[busiest]["seconds"], 0.1)
        total_other = sum(runs[i]["other_cpu"] for i in order)
        total_wall = sum(runs[i]["seconds"] for i in order)
        mean = total_other / max(total_wall, 0.1)
        shared = [i for i in order if contended(runs[i])]
        add(f"Other processes on the machine used {mean:.2f} CPUs on average during the runs "
            f"(most: {worst:.2f} CPUs during `{busiest}`); see *Run conditions*. "
            + (f"**{len(shared)} run(s) shared the machine with more than {CONTENDED_CORES} CPUs of other work** "
               "(marked ⚠ below): their throughput and latency are pessimistic; CPU per GiB and per frame "
               "are less affected." if shared else "No run shared the machine with significant other work."))
        add("")

    # ------------------------------------------------------------ targets
    add("## Targets")
    add("")
    verdicts = []
    # (a) 1 KiB flood, both framings: relay CPU/GiB <= HAProxy's.
    all_a = True
    for framing, pairs in FLOOD_1K:
        relay = run(f"flood1k-{framing}-p{pairs}-relay")
        pipe = run(f"flood1k-{framing}-p{pairs}-pipe")
        r = ratio(get(relay, "server", "cpu_s_per_gib"), get(pipe, "server", "cpu_s_per_gib"))
        valid = ok(relay) and ok(pipe) and r is not None
        passed = valid and r <= 1.0
        all_a = all_a and passed
        detail = (f"relay {fmt(get(relay, 'server', 'cpu_s_per_gib'), 3)} vs HAProxy "
                  f"{fmt(get(pipe, 'server', 'cpu_s_per_gib'), 3)} CPU-s/GiB, ratio {fmt(r, 2)}")
        verdicts.append(verdict(passed, f"(a) 1 KiB flood, {framing}, {pairs} pair{'s' if pairs > 1 else ''}: "
                                f"relay CPU per GiB ≤ HAProxy's: {detail}",
                                "" if valid else "(no valid measurement: a run failed)"))
    verdicts.insert(0, verdict(all_a, "(a) 1 KiB flood, both framings: relay CPU-s/GiB ÷ HAProxy CPU-s/GiB ≤ 1.0 in all four runs"))
    # (b) 1000 paced audio pairs.
    relay = run("paced160-framed-p1000-relay")
    pipe = run("paced160-framed-p1000-pipe")
    lost = get(relay, "frames_lost")
    verdicts.append(verdict(ok(relay) and lost == 0,
                            f"(b) 1000 audio pairs (160 B at 50 frames/s each): relay frames lost = 0: lost {fmt(lost)} "
                            f"of {fmt(get(relay, 'frames_sent'))}"))
    p99 = get(relay, "latency_us", "p99")
    verdicts.append(verdict(ok(relay) and p99 is not None and p99 < 1000,
                            f"(b) 1000 audio pairs: relay p99 one-way latency < 1 ms: p99 {fmt(p99, 1)} µs "
                            f"(direct, no relay: {fmt(get(run('paced160-framed-p1000-direct'), 'latency_us', 'p99'), 1)} µs; "
                            f"HAProxy: {fmt(get(pipe, 'latency_us', 'p99'), 1)} µs)"))
    r = ratio(get(relay, "server", "cpu_us_per_frame"), get(pipe, "server", "cpu_us_per_frame"))
    verdicts.append(verdict(ok(relay) and ok(pipe) and r is not None and r <= 1.0,
                            f"(b) 1000 audio pairs: relay CPU per frame ≤ HAProxy's: relay "
                            f"{fmt(get(relay, 'server', 'cpu_us_per_frame'), 2)} vs HAProxy "
                            f"{fmt(get(pipe, 'server', 'cpu_us_per_frame'), 2)} CPU-µs/frame, ratio {fmt(r, 2)}",
                            "(aim ≤ 0.6: " + ("met)" if r is not None and r <= 0.6 else "not met)")))
    # (c) idle at 15 000 connections.
    idle = run("idle-c15000-relay")
    per = get(idle, "server", "rss_per_connection_bytes")
    held = get(idle, "held")
    requested = get(idle, "connections_requested")
    verdicts.append(verdict(ok(idle) and per is not None and per <= 1024 and held == requested,
                            f"(c) idle: ≤ 1024 bytes of relay RSS per connection at 15 000 connections: "
                            f"{fmt(per, 0)} bytes per connection, {fmt(held)} of {fmt(requested)} held"))
    lines.extend(verdicts)
    add("")

    # ------------------------------------------------------------ ratios
    add("## Ratios (compare these across machines)")
    add("")
    add("CPU is the measured server's user+system time over the window, from /proc (10 ms ticks). "
        "Per GiB and per frame divide it by what the receivers got.")
    add("")
    rows = []
    scenarios = [(f"1 KiB flood, {f}, {p} pair{'s' if p > 1 else ''}", f"flood1k-{f}-p{p}") for f, p in FLOOD_1K]
    scenarios.append(("64 KiB flood, framed, 10 pairs", "flood64k-framed-p10"))
    for label, prefix in scenarios:
        relay, direct, pipe = run(prefix + "-relay"), run(prefix + "-direct"), run(prefix + "-pipe")
        rows.append([
            label,
            fmt(ratio(get(relay, "server", "cpu_s_per_gib"), get(pipe, "server", "cpu_s_per_gib")), 2),
            fmt(ratio(get(relay, "delivered_mibps"), get(direct, "delivered_mibps")), 2),
            fmt(ratio(get(pipe, "delivered_mibps"), get(direct, "delivered_mibps")), 2),
        ])
    add(table(["flood scenario", "relay CPU-s/GiB ÷ HAProxy CPU-s/GiB", "relay MiB/s ÷ direct MiB/s",
               "HAProxy MiB/s ÷ direct MiB/s"], rows))
    add("")
    relay, direct, pipe = run("paced160-framed-p1000-relay"), run("paced160-framed-p1000-direct"), run("paced160-framed-p1000-pipe")
    add(table(["paced scenario", "relay CPU-µs/frame ÷ HAProxy CPU-µs/frame", "relay frames/s ÷ direct frames/s",
               "relay p99 ÷ direct p99"], [[
        "160 B at 50 frames/s, 1000 pairs, framed",
        fmt(ratio(get(relay, "server", "cpu_us_per_frame"), get(pipe, "server", "cpu_us_per_frame")), 2),
        fmt(ratio(get(relay, "delivered_fps"), get(direct, "delivered_fps")), 2),
        fmt(ratio(get(relay, "latency_us", "p99"), get(direct, "latency_us", "p99")), 2),
    ]]))
    add("")

    # ------------------------------------------------------------ reference
    add("## Reference figures from the issue (another machine, for context)")
    add("")
    add(table(["server", "flood", "paced", "idle"], [list(row) for row in REFERENCE]))
    add("")

    # ------------------------------------------------------------ scenario tables
    add("## Media: 1 KiB frames flat out")
    add("")
    add("Each stream keeps at most 256 KiB in flight (the tool's end-to-end window). "
        "`direct` is plain loopback to a sink in the tool (no server), `pipe` goes through HAProxy; "
        "both send the same bytes as the relay runs (same framing).")
    add("")
    rows = []
    for framing, pairs in FLOOD_1K:
        for target in TARGETS:
            rows.append(media_row(f"{framing}, {pairs} pair{'s' if pairs > 1 else ''}", target,
                                  run(f"flood1k-{framing}-p{pairs}-{target}")))
    add(table(MEDIA_HEADER, rows))
    add("")

    add("## Media: 160 B at 50 frames/s, 1000 pairs (audio), framed")
    add("")
    add("50 000 frames/s in all, each frame written on its own.")
    add("")
    add(table(MEDIA_HEADER, [media_row("1000 pairs, paced", t, run(f"paced160-framed-p1000-{t}")) for t in TARGETS]))
    add("")

    add("## Media: 64 KiB frames flat out, 10 pairs, framed")
    add("")
    add(table(MEDIA_HEADER, [media_row("10 pairs, 64 KiB", t, run(f"flood64k-framed-p10-{t}")) for t in TARGETS]))
    add("")

    add("## Calls: set-up and tear-down rate, 10 pairs (relay)")
    add("")
    calls = run("calls-framed-p10-relay")
    add(table(["calls/s", "calls", "ring p50/p99 µs", "accept p50/p99 µs", "end p50/p99 µs",
               "server CPU s", "CPU µs/call", "errors", "status"], [[
        fmt(get(calls, "calls_per_s"), 0),
        fmt(get(calls, "calls")),
        f"{fmt(get(calls, 'ring_us', 'p50'), 1)} / {fmt(get(calls, 'ring_us', 'p99'), 1)}",
        f"{fmt(get(calls, 'accept_us', 'p50'), 1)} / {fmt(get(calls, 'accept_us', 'p99'), 1)}",
        f"{fmt(get(calls, 'end_us', 'p50'), 1)} / {fmt(get(calls, 'end_us', 'p99'), 1)}",
        fmt(get(calls, "server", "cpu_s")),
        fmt(get(calls, "server", "cpu_us_per_call"), 1),
        fmt(get(calls, "errors")),
        status_cell(calls),
    ]]))
    add("")

    add("## Idle connections (relay, seed framing, fresh relay with --max-connections 20000 for each)")
    add("")
    add("RSS per connection = (relay RSS at the end of the hold − RSS before the first connection) ÷ connections held.")
    add("")
    rows = []
    for connections in (5000, 15000):
        idle = run(f"idle-c{connections}-relay")
        rows.append([
            fmt(connections),
            fmt(get(idle, "established")),
            fmt(get(idle, "held")),
            fmt(get(idle, "server", "rss_before_kib")),
            fmt(get(idle, "server", "rss_kib")),
            fmt(get(idle, "server", "peak_rss_kib")),
            fmt(get(idle, "server", "rss_per_connection_bytes"), 0),
            fmt(get(idle, "server", "cpu_s")),
            fmt(get(idle, "errors")),
            status_cell(idle),
        ])
    add(table(["connections", "established", "held", "RSS before KiB", "RSS holding KiB", "peak RSS KiB",
               "bytes/connection", "server CPU s (hold)", "errors", "status"], rows))
    add("")

    # ------------------------------------------------------------ failures
    if failed:
        add("## Failed runs")
        add("")
        for item in failed:
            add(f"- `{item['id']}`: {status_cell(item)} after {item['seconds']:.1f} s. stderr:")
            add("")
            add("  ```")
            for line in (item["stderr"] or "(empty)").splitlines()[-10:]:
                add("  " + line)
            add("  ```")
        add("")

    # ------------------------------------------------------------ commands
    add("## Exact commands")
    add("")
    add(f"From the repository root, in this order (ports as used in this run: pipe 127.0.0.1:{machine.get('pipe_port', '?')} "
        f"-> sink 127.0.0.1:{machine.get('sink_port', '?')}; each relay got a fresh free port). "
        "`$RELAY_PID` and `$HAPROXY_PID` are the servers started by the lines before; each tool run's JSON went "
        "to `bench/out/ID.json`. Also in `bench/out/commands.sh`.")
    add("")
    add("```sh")
    add(read_text(out_dir, "commands.sh"))
    add("```")
    add("")
    add("`bench/out/haproxy.cfg` (mode tcp, no splicing, one thread like the relay, no logging, no health checks):")
    add("")
    add("```")
    add(read_text(out_dir, "haproxy.cfg"))
    add("```")
    add("")
    add("## Run conditions")
    add("")
    add("Per tool run: wall time (set-up + warm-up + window + drain), exit status, and CPU seconds over the whole run "
        "from /proc: the load tool, the measured server (whole run, not just the window), and everything else on "
        f"the machine (other processes; ⚠ when more than {CONTENDED_CORES} CPUs on average).")
    add("")
    add(table(["run", "seconds", "exit", "tool CPU s", "server CPU s", "others CPU s", "others, CPUs"], [[
        f"`{i}`", f"{runs[i]['seconds']:.1f}", str(runs[i]["status"]), f"{runs[i]['tool_cpu']:.2f}",
        f"{runs[i]['server_cpu']:.2f}", f"{runs[i]['other_cpu']:.2f}",
        f"{runs[i]['other_cpu'] / max(runs[i]['seconds'], 0.1):.2f}" + (" ⚠" if contended(runs[i]) else ""),
    ] for i in order]))
    add("")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py OUT_DIR RESULTS_MD")
    out_dir, target = sys.argv[1], sys.argv[2]
    machine, runs, order = load(out_dir)
    text = build(machine, runs, order, out_dir)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"report: {len(order)} runs, {sum(1 for i in order if not ok(runs[i]))} failed -> {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
