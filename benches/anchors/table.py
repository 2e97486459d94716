#!/usr/bin/env python3
"""Print the simbal-vs-anchors comparison table (stdlib only).

Reads <dir>/simbal.json, <dir>/torch.json, <dir>/jax.json (any may be missing) in the
common schema, prints a plain-text table and writes a markdown version (--md).
Rows: shape x op; columns: median time (ms) per implementation and, for each anchor,
anchor_time / simbal_time ("x": how many times faster simbal is). A final row gives the
geometric mean over the four router "step" shapes. When simbal.json has `step-burn` rows (the
step through simbal-burn on burn's CPU backend), a second table gives step-burn / step per shape
against the 1.15x overhead target (issue 12).
"""

import argparse
import json
import math
import os
import sys

SHAPE_ORDER = ["paper-M", "paper-L", "mixtral", "deepseek",
               "simbal-768x32", "simbal-1536x32", "simbal-7168x256"]
OP_ORDER = ["step", "step-burn", "step-burn-flex", "step-masked", "forward", "gemm-floor", "bytes-floor", "simbal"]
STEP_SHAPES = ["paper-M", "paper-L", "mixtral", "deepseek"]
FILES = [("simbal", "simbal.json"), ("torch", "torch.json"), ("jax", "jax.json")]


def load(path):
    try:
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc.get("results"), list):
            raise ValueError("no 'results' list")
        return doc
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as ex:
        print(f"warning: ignoring {path}: {ex}", file=sys.stderr)
        return None


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt_ms(s):
    if s is None:
        return "—"
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}x"


def build(dirpath, stat="median_s"):
    docs = {}
    for key, fname in FILES:
        doc = load(os.path.join(dirpath, fname))
        if doc is not None:
            docs[key] = doc
    # (shape, op) -> {key: median_s}
    times, dims = {}, {}
    for key, doc in docs.items():
        for r in doc["results"]:
            try:
                sk = (r["shape"], r["op"])
                times.setdefault(sk, {})[key] = float(r[stat])
                dims[sk] = (r.get("n"), r.get("d"), r.get("e"), r.get("k"))
            except (KeyError, TypeError, ValueError):
                continue

    def order(sk):
        s, o = sk
        return (SHAPE_ORDER.index(s) if s in SHAPE_ORDER else len(SHAPE_ORDER), s,
                OP_ORDER.index(o) if o in OP_ORDER else len(OP_ORDER), o)

    keys = sorted(times, key=order)
    impl_keys = [k for k, _ in FILES if k in docs]
    anchors = [k for k in impl_keys if k != "simbal"]
    header = ["shape", "op", "dims"]
    for k in impl_keys:
        header.append(f"{docs[k]['impl']} (ms)")
    if "simbal" in docs:
        for k in anchors:
            header.append(f"{docs[k]['impl']} / simbal")
    rows = []
    for sk in keys:
        n, d, e, k_ = dims[sk]
        dim = f"{d}x{e}" if sk[1] == "simbal" else f"{n}x{d}x{e} k{k_}"
        row = [sk[0], sk[1], dim]
        t = times[sk]
        for k in impl_keys:
            row.append(fmt_ms(t.get(k)))
        if "simbal" in docs:
            for k in anchors:
                r = t[k] / t["simbal"] if k in t and t.get("simbal") else None
                row.append(fmt_ratio(r))
        rows.append(row)
    # geometric mean over the four step shapes (only where an impl has all four)
    if keys:
        row = ["geomean", "step", "4 shapes"]
        for k in impl_keys:
            xs = [times.get((s, "step"), {}).get(k) for s in STEP_SHAPES]
            row.append(fmt_ms(geomean(xs)) if all(x for x in xs) else "—")
        if "simbal" in docs:
            for k in anchors:
                rs = []
                for s in STEP_SHAPES:
                    t = times.get((s, "step"), {})
                    rs.append(t[k] / t["simbal"] if t.get(k) and t.get("simbal") else None)
                row.append(fmt_ratio(geomean(rs)) if all(rs) else "—")
        rows.append(row)
    return docs, header, rows


BURN_TARGET = 1.15


# The burn ops and the backend each runs on.
BURN_OPS = [("step-burn", "Autodiff<NdArray<f32>>"), ("step-burn-flex", "Autodiff<Flex>")]


def burn_rows(dirpath, stat="median_s", op="step-burn"):
    """(shape, step s, op s, ratio, met) for each step shape with both rows in simbal.json."""
    doc = load(os.path.join(dirpath, "simbal.json"))
    if doc is None:
        return []
    t = {}
    for r in doc["results"]:
        try:
            t[(r["shape"], r["op"])] = float(r[stat])
        except (KeyError, TypeError, ValueError):
            continue
    out = []
    for s in STEP_SHAPES:
        a, b = t.get((s, "step")), t.get((s, op))
        if a and b:
            out.append((s, a, b, b / a, b / a <= BURN_TARGET))
    return out


def render_burn(rows, md, op="step-burn"):
    header = ["shape", "step (ms)", f"{op} (ms)", f"{op} / step", f"<= {BURN_TARGET}x?"]
    body = [[s, fmt_ms(a), fmt_ms(b), fmt_ratio(r), "yes" if ok else "no"] for s, a, b, r, ok in rows]
    if md:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    return render_text(header, body)


def notes(docs):
    lines = []
    for key, _ in FILES:
        if key in docs:
            d = docs[key]
            iters = sorted({r.get("iters") for r in d["results"]} - {None})
            lines.append(f"{d['impl']} {d.get('version', '?')}, threads={d.get('threads')}, "
                         f"machine={d.get('machine', '?')}, iters={','.join(map(str, iters))}")
        else:
            lines.append(f"{key}: no results (missing {key}.json)")
    return lines


def render_text(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = []
    fmt = lambda r: "  ".join(  # noqa: E731
        (str(x).ljust(w) if i < 3 else str(x).rjust(w)) for i, (x, w) in enumerate(zip(r, widths)))
    out.append(fmt(header))
    out.append("  ".join("-" * w for w in widths))
    for i, r in enumerate(rows):
        if r[0] == "geomean":
            out.append("  ".join("-" * w for w in widths))
        out.append(fmt(r))
    return "\n".join(out)


def render_md(header, rows, note_lines, stat):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        cells = [f"**{x}**" if r[0] == "geomean" and x not in ("—", "") else str(x) for x in r]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{stat.capitalize()} wall time per call (ms). `anchor / simbal` = how many times faster simbal is.")
    out.append("")
    for line in note_lines:
        out.append(f"- {line}")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="target/compare", help="directory with simbal/torch/jax.json")
    p.add_argument("--md", default=None, help="write markdown table here (default <dir>/table.md)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="which per-call statistic to tabulate (default median; min is more robust "
                        "on a machine with noisy neighbours)")
    a = p.parse_args()
    md_path = a.md or os.path.join(a.dir, "table.md")
    docs, header, rows = build(a.dir, f"{a.stat}_s")
    note_lines = notes(docs)
    if not docs:
        print(f"no result files in {a.dir} (expected simbal.json, torch.json, jax.json)")
        return 0
    print(render_text(header, rows))
    print()
    print(f"{a.stat} wall time per call (ms); 'anchor / simbal' = how many times faster simbal is")
    for line in note_lines:
        print("  " + line)
    burns = [(op, backend, burn_rows(a.dir, f"{a.stat}_s", op)) for op, backend in BURN_OPS]
    for op, backend, burn in burns:
        if burn:
            print()
            print(f"simbal-burn ({backend}) against the direct faer step, {a.stat} times:")
            print(render_burn(burn, md=False, op=op))
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(render_md(header, rows, note_lines, a.stat))
        for op, backend, burn in burns:
            if burn:
                f.write(f"\nsimbal-burn (`{backend}`) against the direct faer step "
                        f"({a.stat}):\n\n")
                f.write(render_burn(burn, md=True, op=op))
    print(f"\nwrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
