#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into bench/RESULTS.md.

Usage: report.py OUT_DIR RESULTS_MD

OUT_DIR holds what run.sh left: machine.txt ("key: value" lines),
manifest.tsv (per run: id, exit status, seconds, server alive, CPU seconds
of the machine, the tool, the server and the rest, command), ID.json (the
tool's one JSON object, or nothing if it failed early), ID.err,
commands.sh and haproxy.cfg. Python 3 standard library only.

Media runs through the relay and HAProxy may be repeated: ID-relay-r1,
ID-relay-r2, ... The report shows the median run (by server CPU per GiB,
or per frame for paced runs) and every run's value of that figure.
"""

import json
import math
import os
import re
import sys

# Reference figures from the issue (another machine; for context only).
REFERENCE = [
    ("original Qt server", "~30 CPU-s/GiB", "37-71 CPU-µs per frame at 10 000 paced frames/s", "7-9 KiB RSS per idle connection"),
    ("HAProxy (mode tcp)", "~0.7-0.9 CPU-s/GiB", "12-17 CPU-µs per write", "-"),
]

# Other processes using more CPUs than this on average during a run mark it.
CONTENDED_CPUS = 0.1

FLOOD_1K = [(framing, pairs) for framing in ("seed", "framed") for pairs in (1, 100)]
TARGETS = ("relay", "direct", "pipe")
PACED = "paced160-framed-p1000"
CLUSTER = "cluster160-p1000"
FLOOD_64K = "flood64k-framed-p10"
# The 1 KiB flood over TLS (framed): relay with TLS clients, the same relay with plain clients, HAProxy with TLS
# on both sides.
TLS_1K = [(pairs, f"tls1k-framed-p{pairs}") for pairs in (1, 100)]
TLS_TARGETS = (("relay", "relay, TLS clients"), ("plain", "relay, plain clients"), ("pipe", "HAProxy, TLS both sides"))


# ---------------------------------------------------------------- loading

def load(out_dir):
    machine = {}
    with open(os.path.join(out_dir, "machine.txt"), encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.rstrip("\n").partition(": ")
            if key:
                machine[key] = value
    runs, order = {}, []
    with open(os.path.join(out_dir, "manifest.tsv"), encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t", 8)
            if len(fields) != 9:
                continue
            run_id, status, seconds, alive, busy, tool, server, other, command = fields
            result = None
            try:
                with open(os.path.join(out_dir, run_id + ".json"), encoding="utf-8") as result_file:
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


# ---------------------------------------------------------------- runs and groups

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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return value if math.isfinite(value) else None


def others_cpus(run):
    return run["other_cpu"] / max(run["seconds"], 0.1)


def contended(run):
    return run is not None and others_cpus(run) > CONTENDED_CPUS


class Group:
    """The runs of one scenario and target (one, or repetitions -rN)."""

    def __init__(self, runs, prefix, target, key):
        pattern = re.compile(re.escape(f"{prefix}-{target}") + r"(-r\d+)?$")
        self.runs = [run for run_id, run in runs.items() if pattern.match(run_id)]
        self.runs.sort(key=lambda run: run["id"])
        self.key = key
        good = [run for run in self.runs if ok(run) and get(run, *key) is not None]
        good.sort(key=lambda run: get(run, *key))
        # The lower median: a real run, whose figures belong together.
        self.median = good[(len(good) - 1) // 2] if good else None
        self.all_ok = bool(self.runs) and all(ok(run) for run in self.runs)

    def get(self, *keys):
        return get(self.median, *keys)

    def values(self, digits):
        """The key figure of every run, in run order."""
        return " / ".join(fmt(get(run, *self.key), digits) if ok(run) else "failed" for run in self.runs) or "-"

    def status(self):
        if not self.runs:
            return "not run"
        failed = [run for run in self.runs if not ok(run)]
        count = f" ({len(self.runs)} runs)" if len(self.runs) > 1 else ""
        if not failed:
            return "ok" + count + (" ⚠" if any(contended(run) for run in self.runs) else "")
        return "**FAILED** (" + "; ".join(f"`{run['id']}`: {failure(run)}" for run in failed) + ")"


def failure(run):
    reasons = []
    if run["status"] != 0:
        reasons.append(f"exit {run['status']}")
    if not run["alive"]:
        reasons.append("server died")
    if run["result"] is None:
        reasons.append("no JSON")
    return ", ".join(reasons) or "ok"


# ---------------------------------------------------------------- formatting

def fmt(value, digits=None):
    """A number for a table: counts (no digits given) as integers, spaces between thousands."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if digits is None:
        if isinstance(value, int) or value.is_integer():
            return f"{int(value):,}".replace(",", " ")
        digits = 2
    if abs(value) >= 100:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def plural(count, word):
    return f"{count} {word}" + ("" if count == 1 else "s")


MEDIA_HEADER = [
    "scenario", "target", "delivered MiB/s", "delivered frames/s", "sent", "lost", "errors",
    "p50 µs", "p99 µs", "p99.9 µs", "max µs", "server CPU s", "CPU s/GiB", "CPU µs/frame",
    "server peak RSS KiB", "every run", "status",
]


def media_row(label, target, group, digits, target_label=None):
    server = target != "direct"
    dash = "-"
    return [
        label,
        target_label or {"pipe": "pipe (HAProxy)"}.get(target, target),
        fmt(group.get("delivered_mibps"), 1),
        fmt(group.get("delivered_fps"), 0),
        fmt(group.get("frames_sent")),
        fmt(group.get("frames_lost")),
        fmt(group.get("errors")),
        fmt(group.get("latency_us", "p50"), 1),
        fmt(group.get("latency_us", "p99"), 1),
        fmt(group.get("latency_us", "p999"), 1),
        fmt(group.get("latency_us", "max"), 1),
        fmt(group.get("server", "cpu_s"), 2) if server else dash,
        fmt(group.get("server", "cpu_s_per_gib"), 3) if server else dash,
        fmt(group.get("server", "cpu_us_per_frame"), 2) if server else dash,
        fmt(group.get("server", "peak_rss_kib")) if server else dash,
        group.values(digits),
        group.status(),
    ]


def problem(*groups):
    """What keeps groups from counting: "" when every run of each is fine."""
    if any(not group.runs for group in groups):
        return "; not run"
    if any(not group.all_ok for group in groups):
        return "; a run failed"
    return ""


def verdict(passed, text):
    return f"- **{'PASS' if passed else 'MISS'}** {text}"


# ---------------------------------------------------------------- the report

def get_slice(entry, key):
    """A latency percentile (µs) of one slice object of a media run."""
    value = entry.get("latency_us", {}).get(key)
    return value if isinstance(value, (int, float)) else float("nan")


def slice_p99s(run):
    """p99 one-way delay (ms) of each full 5 s slice of a media run with slices (the last, partial
    slice of the drain is left out)."""
    if run is None or run["result"] is None:
        return []
    slices = [entry for entry in run["result"].get("slices", []) if entry.get("frames")]
    full = [entry for entry in slices if entry.get("start_s", 0) + 5 <= 20.001]
    return [get_slice(entry, "p99") / 1000.0 for entry in full]


def notsent(ss_text):
    """The largest `notsent:` figure in `ss -tmi` output ("0" if none shown)."""
    figures = [int(part.split(":", 1)[1]) for part in ss_text.split() if part.startswith("notsent:")]
    return str(max(figures)) if figures else "0"


def build(machine, runs, order, out_dir):
    lines = []
    add = lines.append
    gib = ("server", "cpu_s_per_gib")
    per_frame = ("server", "cpu_us_per_frame")
    mibps = ("delivered_mibps",)

    def group(prefix, target, key=None):
        if key is None:
            key = mibps if target == "direct" else gib
        return Group(runs, prefix, target, key)

    failed = [runs[i] for i in order if not ok(runs[i])]
    repeat = machine.get("repeat", "1")

    add("# callrelay benchmark results")
    add("")
    add(f"Run on {machine.get('date', '?')} by `make bench` (bench/run.sh, then bench/report.py) at commit "
        f"`{machine.get('git', '?')}`; the suite took {machine.get('suite_seconds', '?')} s of wall time for "
        f"{len(order)} tool runs. **Rerun with `make bench`**: it builds, reruns every scenario and rewrites this file; "
        "the raw JSON of every run is kept in `bench/out/` (not committed), with the exact commands in "
        "`bench/out/commands.sh`.")
    add("")
    if failed:
        add(f"**{plural(len(failed), 'run')} FAILED** (the tool exited non-zero or the server died): "
            + ", ".join(f"`{run['id']}`" for run in failed) + ". See *Failed runs*; `make bench` exited non-zero.")
    else:
        add("Every run exited 0 (no errors) and no server died.")
    add("")

    # ------------------------------------------------------------ machine
    add("## Machine")
    add("")
    keys = [("nproc", "CPUs (nproc)"), ("cpu", "CPU model"), ("kernel", "kernel"), ("memory", "memory"),
            ("rustc", "rustc"), ("haproxy", "HAProxy"), ("open files limit", "open files limit (ulimit -n)")]
    add(table(["", ""], [[label, f"`{machine.get(key, '?')}`"] for key, label in keys]))
    add("")
    add("The load tool (one thread), the relay (one thread) and HAProxy (`nbthread 1`) share these CPUs. Every "
        "media and calls figure comes from a 5 s window after 1 s of warm-up; idle holds 5 s. "
        f"The relay and HAProxy runs of the 1 KiB flood (plain and TLS) and paced audio scenarios were made {repeat} "
        "times each, "
        "interleaved, and the tables show the median run (by server CPU per GiB, or per frame), with every run's "
        "value under *every run*. "
        + ("The benchmark processes ran at normal priority (`BENCH_NICE=-10 make bench` raises it)."
           if machine.get("nice", "none") == "none" else f"The benchmark processes ran under `{machine.get('nice')}`."))
    add("")
    if order:
        busiest = max(order, key=lambda i: others_cpus(runs[i]))
        total_wall = sum(runs[i]["seconds"] for i in order)
        mean = sum(runs[i]["other_cpu"] for i in order) / max(total_wall, 0.1)
        shared = [i for i in order if contended(runs[i])]
        add(f"Other processes on the machine used {mean:.2f} CPUs on average during the runs (most: "
            f"{others_cpus(runs[busiest]):.2f} CPUs during `{busiest}`; see *Run conditions*). "
            + (f"**{len(shared)} of {len(order)} runs shared the machine with more than {CONTENDED_CPUS} CPUs of "
               "other work** (⚠): their throughput and latency are pessimistic, and their CPU per GiB moves too "
               "(a server that is descheduled more reads bigger batches)."
               if shared else "No run shared the machine with significant other work."))
        add("")

    # ------------------------------------------------------------ targets
    add("## Targets")
    add("")
    checks = []
    all_a = True
    for framing, pairs in FLOOD_1K:
        prefix = f"flood1k-{framing}-p{pairs}"
        relay, pipe = group(prefix, "relay"), group(prefix, "pipe")
        r = ratio(relay.get(*gib), pipe.get(*gib))
        passed = relay.all_ok and pipe.all_ok and r is not None and r <= 1.0
        all_a = all_a and passed
        checks.append(verdict(
            passed,
            f"(a) 1 KiB flood, {framing}, {plural(pairs, 'pair')}: relay {fmt(relay.get(*gib), 3)} vs HAProxy "
            f"{fmt(pipe.get(*gib), 3)} CPU-s/GiB, ratio **{fmt(r, 2)}** ≤ 1.0 (every run: relay {relay.values(3)}; "
            f"HAProxy {pipe.values(3)})" + problem(relay, pipe)))
    checks.insert(0, verdict(all_a, "(a) 1 KiB flood, both framings, 1 and 100 pairs: relay CPU per GiB ≤ HAProxy's "
                                    "(median runs; all four below)"))
    relay = group(PACED, "relay", per_frame)
    pipe = group(PACED, "pipe", per_frame)
    direct = group(PACED, "direct")
    lost = [get(run, "frames_lost") for run in relay.runs]
    checks.append(verdict(
        relay.all_ok and all(value == 0 for value in lost),
        f"(b) 1000 audio pairs (160 B at 50 frames/s each, 50 000 frames/s): relay frames lost = 0: lost "
        f"{' / '.join(fmt(value) for value in lost) or '-'} (every run) of {fmt(relay.get('frames_sent'))} sent"
        + problem(relay)))
    p99s = [get(run, "latency_us", "p99") for run in relay.runs]
    checks.append(verdict(
        relay.all_ok and bool(p99s) and all(value is not None and value < 1000 for value in p99s),
        f"(b) 1000 audio pairs: relay p99 one-way latency < 1 ms in every run: "
        f"{' / '.join(fmt(value, 1) for value in p99s) or '-'} µs (direct, no server: "
        f"{fmt(direct.get('latency_us', 'p99'), 1)} µs; HAProxy: "
        f"{' / '.join(fmt(get(run, 'latency_us', 'p99'), 1) for run in pipe.runs) or '-'} µs)" + problem(relay)))
    r = ratio(relay.get(*per_frame), pipe.get(*per_frame))
    checks.append(verdict(
        relay.all_ok and pipe.all_ok and r is not None and r <= 1.0,
        f"(b) 1000 audio pairs: relay {fmt(relay.get(*per_frame), 2)} vs HAProxy {fmt(pipe.get(*per_frame), 2)} "
        f"CPU-µs/frame, ratio **{fmt(r, 2)}** ≤ 1.0 (aim 0.6: {'met' if r is not None and r <= 0.6 else 'not met'}; "
        f"every run: relay {relay.values(2)}; HAProxy {pipe.values(2)})" + problem(relay, pipe)))
    idle = Group(runs, "idle-c15000", "relay", ("server", "rss_per_connection_bytes"))
    per_conn = idle.get("server", "rss_per_connection_bytes")
    held, requested = idle.get("held"), idle.get("connections_requested")
    checks.append(verdict(
        idle.all_ok and per_conn is not None and per_conn <= 1024 and held == requested,
        f"(c) idle: {fmt(per_conn, 0)} bytes of relay RSS per connection at 15 000 connections ≤ 1024 "
        f"({fmt(held)} of {fmt(requested)} held)" + problem(idle)))
    relay_slices = slice_p99s(runs.get("slow-relay"))
    pipe_slices = slice_p99s(runs.get("slow-pipe"))
    bounded = (len(relay_slices) >= 2 and relay_slices[-1] < 1500
               and relay_slices[-1] <= relay_slices[0] + 300)
    checks.append(verdict(
        bounded,
        f"(d) slow receiver (1200 B x 100/s, reader 60 KB/s, SO_RCVBUF 4096, 20 s): relay p99 one-way delay of "
        f"the last 5 s {fmt(relay_slices[-1] if relay_slices else None, 0)} ms < 1500 and not growing "
        f"(per slice: {' / '.join(fmt(v, 0) for v in relay_slices) or '-'} ms); HAProxy per slice: "
        f"{' / '.join(fmt(v, 0) for v in pipe_slices) or '-'} ms"))
    for pairs, prefix in TLS_1K:
        relay, pipe = group(prefix, "relay"), group(prefix, "pipe")
        r = ratio(relay.get(*gib), pipe.get(*gib))
        checks.append(verdict(
            relay.all_ok and pipe.all_ok and r is not None and r <= 1.0,
            f"(e) 1 KiB flood over TLS, framed, {plural(pairs, 'pair')}: relay {fmt(relay.get(*gib), 3)} vs HAProxy "
            f"(TLS on both sides) {fmt(pipe.get(*gib), 3)} CPU-s/GiB, ratio **{fmt(r, 2)}** ≤ 1.0 (every run: relay "
            f"{relay.values(3)}; HAProxy {pipe.values(3)})" + problem(relay, pipe)))
    cross, same = group(CLUSTER, "cross", per_frame), group(CLUSTER, "same", per_frame)
    r = ratio(cross.get(*per_frame), same.get(*per_frame))
    lost = [get(run, "frames_lost") for run in cross.runs]
    checks.append(verdict(
        cross.all_ok and same.all_ok and r is not None and r <= 1.3 and all(value == 0 for value in lost),
        f"(f) cluster, 1000 audio pairs, caller on node A and callee on node B: both nodes' CPU "
        f"{fmt(cross.get(*per_frame), 2)} vs {fmt(same.get(*per_frame), 2)} CPU-µs/frame with all pairs on A, "
        f"ratio **{fmt(r, 2)}** ≤ 1.3, frames lost {' / '.join(fmt(value) for value in lost) or '-'} = 0 "
        f"(every run: cross {cross.values(2)}; same {same.values(2)})" + problem(cross, same)))
    lines.extend(checks)
    add("")

    # ------------------------------------------------------------ ratios
    add("## Ratios (compare these across machines)")
    add("")
    add("Server CPU is user+system time from /proc over the window (10 ms ticks; with this kernel's tick "
        "accounting, loopback softirq work is charged to whichever process is running, the same way for the "
        "relay and HAProxy). Per GiB and per frame divide it by what the receivers got in the window.")
    add("")
    rows = []
    scenarios = [(f"1 KiB flood, {f}, {plural(p, 'pair')}", f"flood1k-{f}-p{p}") for f, p in FLOOD_1K]
    scenarios.append(("64 KiB flood, framed, 10 pairs (one run each)", FLOOD_64K))
    for label, prefix in scenarios:
        relay, direct, pipe = group(prefix, "relay"), group(prefix, "direct"), group(prefix, "pipe")
        rows.append([
            label,
            fmt(ratio(relay.get(*gib), pipe.get(*gib)), 2),
            fmt(ratio(relay.get(*mibps), direct.get(*mibps)), 2),
            fmt(ratio(pipe.get(*mibps), direct.get(*mibps)), 2),
        ])
    add(table(["flood scenario", "relay CPU-s/GiB ÷ HAProxy CPU-s/GiB", "relay MiB/s ÷ direct MiB/s",
               "HAProxy MiB/s ÷ direct MiB/s"], rows))
    add("")
    relay, direct, pipe = group(PACED, "relay", per_frame), group(PACED, "direct"), group(PACED, "pipe", per_frame)
    add(table(["paced scenario", "relay CPU-µs/frame ÷ HAProxy CPU-µs/frame", "relay frames/s ÷ direct frames/s",
               "relay p99 ÷ direct p99"], [[
        "160 B at 50 frames/s, 1000 pairs, framed",
        fmt(ratio(relay.get(*per_frame), pipe.get(*per_frame)), 2),
        fmt(ratio(relay.get("delivered_fps"), direct.get("delivered_fps")), 2),
        fmt(ratio(relay.get("latency_us", "p99"), direct.get("latency_us", "p99")), 2),
    ]]))
    add("")

    rows = []
    for pairs, prefix in TLS_1K:
        relay, plain, pipe = group(prefix, "relay"), group(prefix, "plain"), group(prefix, "pipe")
        plain_pipe = group(f"flood1k-framed-p{pairs}", "pipe")
        rows.append([
            f"1 KiB flood over TLS, framed, {plural(pairs, 'pair')}",
            fmt(ratio(relay.get(*gib), pipe.get(*gib)), 2),
            fmt(ratio(relay.get(*gib), plain.get(*gib)), 2),
            fmt(ratio(pipe.get(*gib), plain_pipe.get(*gib)), 2),
            fmt(ratio(relay.get(*mibps), plain.get(*mibps)), 2),
        ])
    add(table(["TLS scenario", "relay TLS CPU-s/GiB ÷ HAProxy TLS CPU-s/GiB",
               "relay TLS CPU-s/GiB ÷ relay plain CPU-s/GiB",
               "HAProxy TLS CPU-s/GiB ÷ HAProxy plain CPU-s/GiB (the plain 1 KiB flood)",
               "relay TLS MiB/s ÷ relay plain MiB/s"], rows))
    add("")

    add("## Reference figures from the issue (another machine, for context)")
    add("")
    add(table(["server", "flood (CPU per GiB)", "paced (CPU per frame)", "idle (RSS per connection)"],
              [list(row) for row in REFERENCE]))
    add("")

    # ------------------------------------------------------------ scenario tables
    add("## Media: 1 KiB frames flat out")
    add("")
    add("Each stream keeps at most 256 KiB in flight (the tool's end-to-end window). `direct` is plain loopback "
        "to a sink inside the tool (no server); `pipe` goes through HAProxy; both carry the same bytes as the "
        "relay runs (same framing). *every run*: server CPU s/GiB of each run (direct: MiB/s).")
    add("")
    rows = []
    for framing, pairs in FLOOD_1K:
        for target in TARGETS:
            rows.append(media_row(f"{framing}, {plural(pairs, 'pair')}", target,
                                  group(f"flood1k-{framing}-p{pairs}", target), 3 if target != "direct" else 0))
    add(table(MEDIA_HEADER, rows))
    add("")

    add("## Media: 160 B at 50 frames/s, 1000 pairs (audio), framed")
    add("")
    add("50 000 frames/s in all, each frame written on its own. *every run*: server CPU µs/frame of each run.")
    add("")
    add(table(MEDIA_HEADER, [media_row("1000 pairs, paced", target,
                                       group(PACED, target, per_frame if target != "direct" else None),
                                       2 if target != "direct" else 1) for target in TARGETS]))
    add("")

    add("## Media: 64 KiB frames flat out, 10 pairs, framed")
    add("")
    add(table(MEDIA_HEADER, [media_row("10 pairs, 64 KiB", target, group(FLOOD_64K, target),
                                       3 if target != "direct" else 0) for target in TARGETS]))
    add("")

    add("## Media: 1 KiB frames flat out over TLS, framed")
    add("")
    add("The relay runs with `--tls-cert`/`--tls-key` and the tool's clients with `--tls --tls-ca` (rustls, ring, "
        "TLS 1.3, P-256 certificates made by run.sh with openssl); *relay, plain clients* is the same relay process "
        "with plain clients on the same port, interleaved. HAProxy bridges TLS on both sides: `bind ... ssl crt` on "
        "the frontend and `server ... ssl verify none` to the tool's sink, which accepts TLS (`--sink-cert`), so "
        "HAProxy decrypts and encrypts every byte, like the relay. *every run*: server CPU s/GiB of each run.")
    add("")
    rows = []
    for pairs, prefix in TLS_1K:
        for target, label in TLS_TARGETS:
            rows.append(media_row(plural(pairs, "pair"), target, group(prefix, target), 3, label))
    add(table(MEDIA_HEADER, rows))
    add("")

    add("## Slow receiver: bounded media delay (PROTOCOL.md 8.2)")
    add("")
    add("1200 B frames at 100 frames/s (120 KB/s) to a receiver that reads 60 KB/s through a 4 KiB "
        "`SO_RCVBUF`, 20 s, one run each. p99 one-way delay of the frames that arrived in each 5 s slice; "
        "*notsent* is what `ss -tmi` showed 10 s in on the socket towards the receiver (the relay's, or "
        "HAProxy's to the sink): the backlog the kernel holds, out of the relay's sight.")
    add("")
    slow_rows = []
    for target, label in (("relay", "relay"), ("pipe", "HAProxy")):
        run = runs.get(f"slow-{target}")
        slices = (run["result"] or {}).get("slices", []) if run and run["result"] else []
        p99s = " / ".join(fmt(get_slice(s, "p99") / 1000.0, 0) for s in slices if s.get("frames"))
        slow_rows.append([label, fmt(get(run, "delivered_share"), 2), p99s or "-",
                          notsent(read_text(out_dir, f"slow-{target}-ss.txt"))])
    add(table(["server", "delivered share", "p99 delay per 5 s slice (ms)", "notsent at 10 s (bytes)"],
              slow_rows))
    add("")

    add("## Calls: set-up and tear-down rate, 10 pairs (relay)")
    add("")
    calls = Group(runs, "calls-framed-p10", "relay", ("calls_per_s",))
    add(table(["calls/s", "calls", "ring p50/p99 µs", "accept p50/p99 µs", "end p50/p99 µs",
               "server CPU s", "CPU µs/call", "errors", "status"], [[
        fmt(calls.get("calls_per_s"), 0),
        fmt(calls.get("calls")),
        f"{fmt(calls.get('ring_us', 'p50'), 1)} / {fmt(calls.get('ring_us', 'p99'), 1)}",
        f"{fmt(calls.get('accept_us', 'p50'), 1)} / {fmt(calls.get('accept_us', 'p99'), 1)}",
        f"{fmt(calls.get('end_us', 'p50'), 1)} / {fmt(calls.get('end_us', 'p99'), 1)}",
        fmt(calls.get("server", "cpu_s"), 2),
        fmt(calls.get("server", "cpu_us_per_call"), 1),
        fmt(calls.get("errors")),
        calls.status(),
    ]]))
    add("")
    add("### Token verification cost per registration")
    add("")
    add("`calls --reconnect`: after every call the callee registers again on a new connection, so each call "
        "costs one connection and one registration. The same relay (`--auth optional`) takes bare ids as they "
        "are and verifies tokens (HMAC-SHA256, `--secret-file` on the tool); runs interleaved, median by CPU "
        "µs per call. Token cost per registration = token CPU µs/call − bare CPU µs/call.")
    add("")
    rows = []
    medians = {}
    for kind, label in (("bare", "bare ids"), ("token", "tokens")):
        registrations = Group(runs, f"calls-reconnect-{kind}", "relay", ("server", "cpu_us_per_call"))
        medians[kind] = registrations.get("server", "cpu_us_per_call")
        rows.append([label, fmt(registrations.get("calls_per_s"), 0), fmt(registrations.get("calls")),
                     fmt(registrations.get("server", "cpu_us_per_call"), 1), registrations.values(1),
                     registrations.status()])
    add(table(["registrations", "calls/s", "calls", "CPU µs/call", "every run (CPU µs/call)", "status"], rows))
    if None not in medians.values():
        add("")
        add(f"Token verification: **{fmt(medians['token'] - medians['bare'], 1)} µs** of relay CPU per "
            f"registration (medians; within run-to-run noise when small: see every run).")
    add("")

    add("## Cluster: two nodes on one Redis, 1000 audio pairs (160 B at 50 frames/s, framed)")
    add("")
    add("*cross*: every caller registers on node A, every callee on node B (`--addr A --addr B`): each frame "
        "crosses the trunk. *same*: all pairs on node A. CPU is both nodes' summed (`--server-pid` twice), "
        "runs interleaved; the table shows the median run by CPU µs per frame.")
    add("")
    rows = []
    for target in ("cross", "same"):
        g = group(CLUSTER, target, per_frame)
        rows.append([target, fmt(g.get("frames_sent")), fmt(g.get("frames_lost")),
                     fmt(g.get("latency_us", "p50"), 0), fmt(g.get("latency_us", "p99"), 0),
                     fmt(g.get(*per_frame), 2), g.values(2), g.status()])
    add(table(["pairs on", "frames sent", "lost", "p50 µs", "p99 µs", "CPU µs/frame (both nodes)",
               "every run", "status"], rows))
    add("")
    redis = read_text(out_dir, "cluster-redis.txt")
    counts = {}
    for line in (redis or "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            counts[parts[0]] = int(parts[2]) - int(parts[1])
    for kind, run_id, what in (("calls", "cluster-calls-cross", "call set-up (and tear-down)"),
                               ("reconnect", "cluster-register-cross", "registration (`calls --reconnect`)")):
        run = runs.get(run_id)
        calls = get(run, "calls") if run else None
        if kind in counts and calls:
            add(f"- Redis scripts (EVAL) per {what}, cross-node, 10 pairs: {counts[kind]} while "
                f"{fmt(calls)} calls completed in the window = **{counts[kind] / calls:.2f}** (an upper bound: the "
                f"count includes the run's warm-up and set-up and the departures of the run before). Besides "
                f"scripts, each node sends 2 commands every 2 s (heartbeat HSET and HGETALL of the nodes).")
    add("")

    add("## Idle connections (relay, seed framing; a fresh relay with --max-connections 20000 for each)")
    add("")
    add("Bytes per connection = (relay RSS at the end of the hold − RSS before the first connection) ÷ "
        "connections held. Kernel socket buffers are not in RSS.")
    add("")
    rows = []
    for connections in (5000, 15000):
        idle = Group(runs, f"idle-c{connections}", "relay", ("held",))
        rows.append([
            fmt(connections),
            fmt(idle.get("established")),
            fmt(idle.get("held")),
            fmt(idle.get("server", "rss_before_kib")),
            fmt(idle.get("server", "rss_kib")),
            fmt(idle.get("server", "peak_rss_kib")),
            fmt(idle.get("server", "rss_per_connection_bytes"), 0),
            fmt(idle.get("server", "cpu_s"), 2),
            fmt(idle.get("errors")),
            idle.status(),
        ])
    add(table(["connections", "established", "held", "RSS before KiB", "RSS holding KiB", "peak RSS KiB",
               "bytes/connection", "server CPU s (hold)", "errors", "status"], rows))
    add("")

    # ------------------------------------------------------------ notes
    add("## How to read these figures")
    add("")
    add("- `--drain 5` (the tool's default is 2 s): the drain ends as soon as every frame of the window has "
        "arrived, so it costs nothing when nothing is late. It is there because with 100 flat-out streams one "
        "turn of the tool's own loop can outlast 2 s, and frames still in flight when the drain ends are counted "
        "as lost (seen: exactly 100 × 256 = 25 600 \"lost\" frames on plain loopback, `direct`, with the default).")
    add("- Latency of flat-out runs with many streams is mostly the tool's own loop (each turn may read up to "
        "32 × 256 KiB per socket, and every read refills its sender): `direct` with 100 pairs shows p99 in the "
        "hundreds of ms with no server at all. Compare flood latencies only between targets of one scenario.")
    add("- Paced runs: `direct` p99 is the floor the tool itself adds on this machine; the 1 ms target is only "
        "meaningful where that floor is far below 1 ms.")
    add("- HAProxy runs with `nbthread 1` (like the relay) and `maxconn 9000`: each connection takes two "
        "descriptors and HAProxy refuses to start when it cannot raise its limit to about 2 × maxconn, and "
        "20 000 is the most a process gets here; the pipe runs need at most 1 000 connections.")
    add("")

    if failed:
        add("## Failed runs")
        add("")
        for run in failed:
            add(f"- `{run['id']}`: {failure(run)} after {run['seconds']:.1f} s; last lines of its stderr:")
            add("")
            add("  ```")
            for line in (run["stderr"] or "(empty)").splitlines()[-10:]:
                add("  " + line)
            add("  ```")
        add("")

    # ------------------------------------------------------------ commands
    add("## Exact commands")
    add("")
    add(f"From the repository root, in this order. Ports of this run: HAProxy 127.0.0.1:{machine.get('pipe_port', '?')} "
        f"-> the tool's sink 127.0.0.1:{machine.get('sink_port', '?')}, TLS: 127.0.0.1:{machine.get('tls_pipe_port', '?')} "
        f"-> 127.0.0.1:{machine.get('tls_sink_port', '?')}; each relay got a fresh free port, shown "
        "on its line. `$RELAY_PID` and `$HAPROXY_PID` are the servers started by the lines before.")
    add("")
    add("```sh")
    add(read_text(out_dir, "commands.sh"))
    add("```")
    add("")
    add("`bench/out/haproxy.cfg`: mode tcp, no splicing, one thread, no logging, no health checks.")
    add("")
    add("```")
    add(read_text(out_dir, "haproxy.cfg"))
    add("```")
    add("")

    add("## Run conditions")
    add("")
    add("Per tool run: wall time (set-up + warm-up + window + drain), exit status, and CPU seconds over the whole "
        "run from /proc: the load tool, the measured server (the whole run, not only the window), and everything "
        f"else on the machine (other processes; ⚠ above {CONTENDED_CPUS} CPUs on average).")
    add("")
    add(table(["run", "seconds", "exit", "tool CPU s", "server CPU s", "others CPU s", "others, CPUs"], [[
        f"`{i}`", f"{runs[i]['seconds']:.1f}", str(runs[i]["status"]), f"{runs[i]['tool_cpu']:.2f}",
        f"{runs[i]['server_cpu']:.2f}", f"{runs[i]['other_cpu']:.2f}",
        f"{others_cpus(runs[i]):.2f}" + (" ⚠" if contended(runs[i]) else ""),
    ] for i in order]))
    add("")
    return "\n".join(lines)


def with_charts(text, runs, directory):
    """The report with a Charts section (before the ratios), drawn by charts.py."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import charts

    per_frame = ("server", "cpu_us_per_frame")
    gib = ("server", "cpu_s_per_gib")
    groups = {
        "paced_relay": Group(runs, PACED, "relay", per_frame),
        "paced_pipe": Group(runs, PACED, "pipe", per_frame),
        "paced_direct": Group(runs, PACED, "direct", ("latency_us", "p99")),
        "floods": [(f"1 KiB {f} {p}p", Group(runs, f"flood1k-{f}-p{p}", "relay", gib),
                    Group(runs, f"flood1k-{f}-p{p}", "pipe", gib)) for f, p in FLOOD_1K]
        + [(f"TLS 1 KiB {p}p", Group(runs, prefix, "relay", gib), Group(runs, prefix, "pipe", gib))
           for p, prefix in TLS_1K],
        "per_frame": [("relay", Group(runs, PACED, "relay", per_frame)),
                      ("HAProxy", Group(runs, PACED, "pipe", per_frame)),
                      ("cluster, same node", Group(runs, CLUSTER, "same", per_frame)),
                      ("cluster, across nodes", Group(runs, CLUSTER, "cross", per_frame))],
    }
    drawn = charts.write(groups, runs, directory, get)
    lines = ["## Charts", ""]
    if drawn is None:
        lines.append("matplotlib is not installed: no charts (bench/run.sh installs it from PyPI).")
    elif not drawn:
        lines.append("No scenario of this run has data for a chart.")
    else:
        lines.append("Drawn from the same runs as the tables below (bench/charts.py).")
        for title, path in drawn:
            lines += ["", f"**{title}**", "", f"![{title}]({path})"]
    section = "\n".join(lines) + "\n\n"
    at = text.find("## Ratios")
    return text[:at] + section + text[at:] if at >= 0 else text + "\n" + section


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py OUT_DIR RESULTS_MD")
    out_dir, target = sys.argv[1], sys.argv[2]
    machine, runs, order = load(out_dir)
    text = build(machine, runs, order, out_dir)
    text = with_charts(text, runs, os.path.dirname(os.path.abspath(target)))
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    failed = sum(1 for i in order if not ok(runs[i]))
    print(f"report: {len(order)} runs, {failed} failed -> {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
