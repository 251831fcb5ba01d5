"""The report: the table, the writes table, the targets with pass/fail, the compare
table, memory, storage and the EXPLAIN section, printed and as markdown."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

from bench.cells import PLAIN_APPEND, Result, Run
from bench.common import fmt_n

# --http-client's names as a table's header says them.
HTTP_LIBRARIES = {"curl": "libcurl", "http.client": "`http.client`"}


def machine() -> dict[str, str]:
    import psutil

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {
        "cores": str(os.cpu_count()),
        "cpu": model or "unknown",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "load": ", ".join(f"{x:.2f}" for x in load),
    }


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def table_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    header = ["operation", "clients", "svc req/s", "svc msg/s", "svc p50 ms", "svc p99 ms",
              "raw req/s", "raw p50 ms", "raw p99 ms", "svc/raw", "errors"]
    rows = []
    for operation in run.operations:
        for concurrency in run.args.clients:
            svc = run.results.get((operation.key, "http", concurrency))
            raw = run.results.get((operation.key, "raw", concurrency))
            if svc is None and raw is None:
                continue
            msgs = svc.rps * operation.msgs if (svc and operation.msgs) else None
            ratio = svc.rps / raw.rps if (svc and raw and raw.rps) else None
            errors = (svc.errors if svc else 0) + (raw.errors if raw else 0)
            rows.append([
                operation.label, str(concurrency),
                _f(svc.rps if svc else None), _f(msgs), _f(svc.pct(0.5) if svc else None, 2),
                _f(svc.pct(0.99) if svc else None, 2),
                _f(raw.rps if raw else None), _f(raw.pct(0.5) if raw else None, 2),
                _f(raw.pct(0.99) if raw else None, 2), _f(ratio, 2), str(errors),
            ])
    return header, rows


def writes_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """The writes table: each append variant against the plain append of its mode,
    measured in the same rounds."""
    assert run.writes is not None
    header = ["append", "clients", "req/s", "p50 ms", "p99 ms", "req/s / plain", "p50 / plain",
              "p50 / plain, median of rounds", "errors"]
    rows = []
    for row in run.writes.rows:
        r, base = row.result, row.base
        plain = row.key == PLAIN_APPEND
        rounds = row.round_ratios
        median = ("-" if plain or not rounds else
                  f"{statistics.median(rounds):.2f} ({len(rounds)}: " + ", ".join(f"{x:.2f}" for x in rounds) + ")")
        rows.append([
            row.label, str(row.clients), _f(r.rps), _f(r.pct(0.5), 2), _f(r.pct(0.99), 2),
            "-" if plain else _f(_ratio(r.rps, base.rps), 2),
            "-" if plain else _f(_ratio(r.pct(0.5), base.pct(0.5)), 2), median, str(r.errors),
        ])
    return header, rows


WRITES_NOTE = (
    "Single-message appends to a fresh context per client, in {rounds} rounds per concurrency of "
    "1/{rounds} of a cell's budget each; in a round the variants run back to back and the order "
    "reverses from round to round. Plain: no Idempotency-Key (the table's \"append 1 msg\" row). "
    "Idempotency-Key: a new key per request (unique per client and request), so every request claims "
    "its key, appends and records its response in one transaction. API keys on: a second service of the "
    "same tree on {auth}. Raw: the store's calls without HTTP; the keyed one is the idempotency scope "
    "(claim, append, record) in one transaction. Ratios are to the plain append of the same mode."
)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def checks(run: Run) -> list[tuple[str, str, bool | None]]:
    """(what, measured, passed) for each target; passed None when not measured."""
    results, sizes = run.results, run.args.sizes
    small, large = sizes[0], sizes[-1]
    out: list[tuple[str, str, bool | None]] = []

    def get(key: str, mode: str, clients: int) -> Result | None:
        r = results.get((key, mode, clients))
        return r if r is not None and r.requests else None

    def p50_ratio(what: str, key_large: str, key_small: str) -> None:
        rounds = run.paired.get((key_large, key_small))
        if rounds:
            ratio = statistics.median(rounds)
            spread = ", ".join(f"{r:.2f}" for r in rounds)
            out.append((what, f"{ratio:.2f}x (median of {len(rounds)} paired rounds: {spread}; target <= 1.30x)",
                        ratio <= 1.3))
            return
        a, b = get(key_large, "http", 1), get(key_small, "http", 1)
        if a is None or b is None:
            out.append((what, "not measured", None))
            return
        ratio = a.pct(0.5) / b.pct(0.5)
        out.append((what, f"{ratio:.2f}x ({a.pct(0.5):.2f} ms vs {b.pct(0.5):.2f} ms; target <= 1.30x)",
                    ratio <= 1.3))

    vs = f"{fmt_n(large)} vs {fmt_n(small)} messages, p50 at 1 client"
    for tokens in ("2k", "8k"):
        p50_ratio(f"window {tokens} tok, {vs}", f"window{tokens}@{large}", f"window{tokens}@{small}")
    p50_ratio(f"last 50, {vs}", f"list@{large}", f"list@{small}")
    p50_ratio(f"get by version, {vs}", f"get@{large}", f"get@{small}")
    p50_ratio(f"fork, {vs}", f"fork@{large}", f"fork@{small}")
    if any(key == f"window2k@{1_000_000}" for key, _, _ in results) and large != 1_000_000:
        for tokens in ("2k", "8k"):
            p50_ratio(f"window {tokens} tok, 1,000,000 vs {fmt_n(small)} messages, p50 at 1 client",
                      f"window{tokens}@1000000", f"window{tokens}@{small}")
    throughput_keys = [("append1", "single appends")] + [
        (f"window{t}@{large}", f"window {t} tok of {fmt_n(large)}") for t in ("2k", "8k")]
    for key, what in throughput_keys:
        for clients in run.args.clients:
            svc, raw = get(key, "http", clients), get(key, "raw", clients)
            label = f"service/raw throughput, {what}, {clients} client{'s' if clients > 1 else ''}"
            if svc is None or raw is None:
                out.append((label, "not measured", None))
                continue
            ratio = svc.rps / raw.rps
            rounds = run.svc_raw.get((key, clients))
            if rounds:
                ratio = statistics.median(rounds)
                label += ", median of rounds"
                detail = (f"{ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in rounds)}; merged {svc.rps:,.0f} "
                          f"vs {raw.rps:,.0f} req/s; target >= 0.50)")
            else:
                detail = f"{ratio:.2f} ({svc.rps:,.0f} vs {raw.rps:,.0f} req/s; target >= 0.50)"
            out.append((label, detail, ratio >= 0.5))
    for clients in run.args.clients:
        single, batch = get("append1", "http", clients), get("append1000", "http", clients)
        label = f"batch of 1000 vs single appends, messages/s, {clients} client{'s' if clients > 1 else ''}"
        if single is None or batch is None:
            out.append((label, "not measured", None))
            continue
        ratio = batch.rps * 1000 / single.rps
        out.append((label, f"{ratio:.1f}x ({batch.rps * 1000:,.0f} vs {single.rps:,.0f} msg/s; target >= 20x)",
                    ratio >= 20))
    return out


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def command_line() -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else "python bench/run.py"
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def render_markdown(run: Run) -> str:
    info = run.info
    header, rows = table_rows(run)
    m = info.get("machine", {})
    lines = [
        f"# Context Store benchmark, {run.started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"- command: `{info.get('command')}`",
        f"- machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory')} memory, {m.get('os')}; "
        f"load average at start {m.get('load')}",
        f"- PostgreSQL: {info.get('pg_version', '?')} ({info.get('pg_settings', '')})",
        f"- Python {m.get('python')}; service {info.get('service_version', '?')} under gunicorn, "
        f"{run.args.workers} workers (gthread), tokenizer {info.get('tokenizer', '?')}, LOG_LEVEL={run.args.log_level}"
        + (f", {' '.join(run.args.service_env)}" if run.args.service_env else ""),
        f"- cells: at most {fmt_n(run.args.max_requests)} requests and {run.args.duration:g} s each, "
        f"clients {', '.join(map(str, run.args.clients))}; sizes {', '.join(fmt_n(s) for s in run.args.sizes)}"
        + (", window on 1,000,000" if run.args.full else ""),
        f"- load: {'; '.join(run.load_rate)}",
        "",
        f"svc = through HTTP ({HTTP_LIBRARIES.get(run.args.http_client, run.args.http_client)} clients, "
        "gunicorn, keep-alive connections to 127.0.0.1); raw = the same SQL statements "
        "through psycopg, one connection per client process. msg/s counts messages written (appends) or "
        "returned (reads). svc/raw compares requests/s.",
        "",
        md_table(header, rows),
        "",
    ]
    if run.writes is not None:
        lines += ["## Writes: retries and keys", "",
                  WRITES_NOTE.format(rounds=run.writes.rounds, auth=run.writes.auth)
                  + (f" The keyed cells left {run.writes.recorded:,} idempotency keys in the database for "
                     f"{run.writes.keyed_requests:,} measured keyed requests (and their warm-up)."
                     if run.writes.recorded is not None else ""), "",
                  md_table(*writes_rows(run)), ""]
    if run.compare is not None:
        lines += compare_markdown(run)
    lines += [
        "## Targets",
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {value} | {verdict(ok)} |" for what, value, ok in checks(run)]
    lines += ["", "## Memory and storage", ""]
    for name, rss, pss in info.get("memory", []):
        lines.append(f"- gunicorn {name}: RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    size = info.get("db_size")
    if size:
        lines.append(f"- messages: {size}")
    if run.explain:
        lines += ["", "## EXPLAIN ANALYZE on the largest context", ""]
        for title, text in run.explain:
            lines += [f"### {title}", "", "```", text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def print_report(run: Run) -> None:
    header, rows = table_rows(run)
    print()
    print(text_table(header, rows))
    print()
    if run.writes is not None:
        print(f"Writes: retries and keys (paired rounds: {run.writes.rounds}; ratios to the plain append)")
        print(text_table(*writes_rows(run)))
        print()
    if run.compare is not None:
        c = run.compare
        print(f"Compare: current tree vs {c.ref} ({c.commit}); ratios are current/ref")
        print(text_table(*compare_rows(run)))
        print()
    print("Targets:")
    for what, value, ok in checks(run):
        print(f"  [{verdict(ok)}] {what}: {value}")
    print()
    for name, rss, pss in run.info.get("memory", []):
        print(f"gunicorn {name}: RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    if run.compare is not None:
        for name, rss, pss in run.compare.memory:
            print(f"gunicorn {name} ({run.compare.ref}): RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    if run.info.get("db_size"):
        print(f"messages: {run.info['db_size']}")
    print(f"PostgreSQL: {run.info.get('pg_version', '?')}")
    sys.stdout.flush()


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and a == a and b == b else None


def compare_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """The compare table: both services side by side, and current/ref ratios of req/s
    and p50, and the medians of the per-round ratios (each round runs both services
    back to back)."""
    assert run.compare is not None
    header = ["operation", "clients", "cur req/s", "ref req/s", "req/s cur/ref", "req/s cur/ref, median of rounds",
              "cur p50 ms", "ref p50 ms", "p50 cur/ref", "p50 cur/ref, median of rounds", "cur p99 ms",
              "ref p99 ms", "errors"]

    def median(rounds: list[float]) -> str:
        if len(rounds) < 2:
            return "-"
        return f"{statistics.median(rounds):.2f} ({len(rounds)}: " + ", ".join(f"{r:.2f}" for r in rounds) + ")"

    rows = []
    for cell in run.compare.cells:
        cur, ref = cell.current, cell.ref
        rows.append([
            cell.label, str(cell.clients), _f(cur.rps), _f(ref.rps), _f(_ratio(cur.rps, ref.rps), 2),
            median(cell.rps_ratios), _f(cur.pct(0.5), 2), _f(ref.pct(0.5), 2),
            _f(_ratio(cur.pct(0.5), ref.pct(0.5)), 2), median(cell.round_ratios),
            _f(cur.pct(0.99), 2), _f(ref.pct(0.99), 2), str(cur.errors + ref.errors),
        ])
    return header, rows


def compare_markdown(run: Run) -> list[str]:
    c = run.compare
    assert c is not None
    lines = [
        f"## Compare: current tree vs `{c.ref}` ({c.commit})",
        "",
        f"- code: current `{c.current_module}`, ref `{c.ref_module}` (exported with `git archive`); "
        f"/openapi.json {c.openapi}",
        f"- ref load: {'; '.join(c.load_rate)}",
        f"- cells alternate between the two services (which goes first alternates too); every cell runs "
        f"in {run.args.compare_rounds} rounds of the cell's budget, each round giving one p50 and one req/s ratio. "
        "Ratios are current/ref: above 1 means the current tree is faster in req/s, slower in p50.",
    ]
    for name, rss, pss in c.memory:
        lines.append(f"- ref gunicorn {name}: RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    lines += ["", md_table(*compare_rows(run)), ""]
    return lines
