"""Whole-zoo conformance -> docs/zoo.md (``make zoo``).

Every torchvision classifier, one model per timm family, every builder of torchvision's
segmentation, detection, video and optical-flow families and the Hugging Face transformers classes
``surgery.zoo.hf`` has small configs for (``HF transformers``, at 32 x 32): the full round trip on a real
model at its default input size (trace, compile with conv1x1 skips + PSwish + 90% random
masks, forward + backward, de-ghost, verify (a)-(d), ONNX parity). A model torch.fx cannot
trace whole is compiled in its task's part (``surgery.zoo.tasks``: a detector's backbone, RAFT's
encoders), trained a step in train mode with synthetic targets, and verified as a whole.
Models above ``--max-params`` run structurally on the meta device instead. Each model runs
in its own process with a time limit; rows are cached in ``.zoo-cache/`` so an interrupted
run resumes (``--fresh`` starts over). ``--families`` and ``--only`` run only those groups and
merge their sections into the existing docs/zoo.md, leaving the other sections as they are.

    python benchmarks/zoo.py [--only torchvision|timm|hf] [--max-params 350e6] [--timeout 1200] [--fresh]
    python benchmarks/zoo.py --families detection,segmentation,video,optical_flow
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from surgery.zoo.catalog import TASK_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".zoo-cache"
DOC = ROOT / "docs" / "zoo.md"
CELLS = ("trace", "compile", "deghost", "isomorphic", "strict_load", "outputs_equal", "onnx_parity")
# Each torchvision task family's section of docs/zoo.md.
TASK_GROUPS = {family: f"torchvision {family.replace('_', ' ')}" for family in TASK_FAMILIES}
HF_GROUP = "HF transformers"


def run_one(spec: str, max_params: float, meta_only: bool = False) -> dict:
    """In the child process: build, check, return the row as a dict."""
    import warnings

    import torch

    from surgery.apps import conformance
    from surgery.zoo import catalog as zoo
    from surgery.zoo.tasks import default_submodule, task_of

    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    meta_model, meta_x = zoo.build(spec, "meta")
    params = sum(p.numel() for p in meta_model.parameters())
    on_cpu = params <= max_params and not meta_only
    model, x = zoo.build(spec, "cpu") if on_cpu else (meta_model, meta_x)
    row = conformance.check_model(spec, model, x, numeric=True, onnx=True, submodule=default_submodule(spec),
                                  dynamic_batch=task_of(spec).dynamic_batch).to_dict()
    if row.get("traced_for"):  # its forward reads the input's shape or dtype in Python (surgery.fx.concrete)
        row["note"] = f"traced for {row['traced_for']}" + ("; " + row["note"] if row["note"] else "")
    if params > max_params:
        row["note"] = (row["note"] + "; " if row["note"] else "") + f"meta only: {params / 1e6:.0f}M parameters"
    row["params"] = params
    if spec.startswith("timm:") and not structural(row):
        row["timm_cannot_trace"] = zoo.timm_cannot_trace(meta_model)
    return row


def cached_row(spec: str, max_params: float, timeout: float, fresh: bool) -> dict:
    path = CACHE / (spec.replace(":", "__").replace("/", "_") + ".json")
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    row = _in_child(spec, max_params, timeout)
    if "trace" not in row:  # crashed (out of memory, say) or timed out: keep the structural check
        why = row["note"]
        row = _in_child(spec, max_params, timeout, meta_only=True)
        row["note"] = (row.get("note", "") + "; " if row.get("note") else "") + f"numeric run skipped: {why}"
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(row))
    return row


def _in_child(spec: str, max_params: float, timeout: float, meta_only: bool = False) -> dict:
    started = time.time()
    command = [sys.executable, __file__, "--one", spec, "--max-params", str(max_params)]
    command += ["--meta-only"] if meta_only else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if lines:
            return json.loads(lines[-1])
        killed = done.returncode < 0 or done.returncode == 137
        why = "killed (out of memory on this machine)" if killed else "crashed: " + done.stderr.strip()[-300:]
        return {"model": spec, "note": why, "seconds": round(time.time() - started, 1)}
    except subprocess.TimeoutExpired:
        return {"model": spec, "note": f"timed out after {timeout:.0f} s", "seconds": round(time.time() - started, 1)}


def mark(value) -> str:
    return {True: "yes", False: "**no**", None: "-"}[value]


def structural(row: dict) -> bool:
    return all(row.get(c) for c in ("trace", "compile", "deghost", "isomorphic", "strict_load"))


def table(rows: list[dict], compiled_column: bool = False) -> str:
    """The rows as a markdown table; ``compiled_column`` adds which part was compiled (task families)."""
    header = ("| model | modes | trace | compile | de-ghost | isomorphic | strict load | outputs equal | ONNX parity "
              "| convs covered / targeted / found | s | note |")
    if compiled_column:
        header = header.replace("| model |", "| model | compiled |")
    lines = [header, "|" + "---|" * (13 if compiled_column else 12)]
    for r in rows:
        convs = (f"{r.get('convs_covered')} / {r.get('convs_targeted')} / {r.get('convs_total')}"
                 if r.get("convs_total") is not None else "-")
        note = (r.get("note") or "").replace("|", "\\|").replace("\n", " ")[:160]
        if r.get("timm_cannot_trace"):
            note = f"xfail, timm itself cannot FX-trace it: {r['timm_cannot_trace'][:100]}"
        cells = " | ".join(mark(r.get(c)) for c in CELLS)
        part = f" {r.get('compiled', 'whole')} |" if compiled_column else ""
        modes = {1: "one graph", 2: "two graphs"}.get(r.get("modes"), "-")
        lines.append(f"| `{r['model']}` |{part} {modes} | {cells} | {convs} | {r.get('seconds', '-')} | {note} |")
    return "\n".join(lines)


def summary(name: str, rows: list[dict]) -> str:
    n = len(rows)
    ok = sum(structural(r) for r in rows)
    xfail = sum(1 for r in rows if not structural(r) and r.get("timm_cannot_trace"))
    numeric = [r for r in rows if r.get("outputs_equal") is not None]
    onnx = [r for r in rows if r.get("onnx_parity") is not None]
    return (
        f"- {name}: **{ok}/{n} ({100 * ok / n:.1f}%) pass structurally**"
        + (f" (xfail: timm itself cannot FX-trace {xfail} of the rest)" if xfail else "")
        + f"; outputs equal on {sum(bool(r['outputs_equal']) for r in numeric)}/{len(numeric)} run numerically; "
        f"ONNX parity on {sum(bool(r['onnx_parity']) for r in onnx)}/{len(onnx)} exported."
    )


def write_doc(groups: dict[str, list[dict]], max_params: float) -> None:
    parts = [
        "# Zoo conformance\n",
        *_intro(max_params),
        "\n".join(summary(name, rows) for name, rows in groups.items()) + "\n",
    ]
    for name, rows in groups.items():
        parts.append(section(name, rows))
    DOC.write_text("\n".join(parts))
    _write_benchmarks_summary([summary(name, rows) for name, rows in groups.items()])


def section(name: str, rows: list[dict]) -> str:
    return f"## {name}\n\n{table(rows, compiled_column=name in TASK_GROUPS.values())}\n"


def merge_doc(groups: dict[str, list[dict]], max_params: float) -> None:
    """Replace (or add) these groups' summary lines and sections in docs/zoo.md, keeping every other group's;
    the introduction becomes the current one."""
    text = DOC.read_text()
    head, *sections = re.split(r"(?m)^(?=## )", text)
    kept = [s for s in sections if s.splitlines()[0][3:].strip() not in groups]
    intro = _intro(max_params)[0].strip()
    lines = [intro if line.startswith(intro[:30]) else line for line in head.splitlines()
             if not any(line.startswith(f"- {name}:") for name in groups)]
    last = max((i for i, line in enumerate(lines) if line.startswith("- ")), default=len(lines) - 1)
    lines[last + 1:last + 1] = [summary(name, rows) for name, rows in groups.items()]
    DOC.write_text("\n".join(lines).rstrip() + "\n\n" + "".join(kept).rstrip() + "\n\n"
                   + "\n".join(section(name, rows) for name, rows in groups.items()))
    _write_benchmarks_summary([line for line in lines if line.startswith("- ")])


def _write_benchmarks_summary(rates: list[str]) -> None:
    from report import write_section

    targets = ("Targets: 100% of torchvision classification models and >= 97% of timm family representatives; "
               "every builder of torchvision's segmentation, detection, video and optical-flow families.")
    write_section("zoo", "Zoo conformance", "\n".join(rates) + f"\n\n{targets} Every row: [docs/zoo.md](zoo.md).")


def _intro(max_params: float) -> list[str]:
    from report import machine

    from surgery.zoo import catalog as zoo

    exported_in_ci, hf = zoo.ONNX_IN_CI, {spec for spec in zoo.ONNX_IN_CI if spec.startswith("hf:")}
    return [
        "Written by `make zoo` (`benchmarks/zoo.py`). Each model, in train mode as training starts: trace in "
        "both modes -> compile (the default recipe: conv1x1 "
        "ghost skips around the body's spatial convs, PSwish, 90% random masks; a model whose only conv is its "
        "stem gets skips around its Linear layers) -> forward + backward -> de-ghost -> verify in both modes: "
        "(a) labelled-graph isomorphism of each mode's graph with the original traced in that mode, "
        "(b) strict `load_state_dict` into the original class, (c) equal outputs in eval mode and in train mode "
        "(same seed; skipped where the original itself cannot run in train mode on the inputs) and (d) "
        "ghosted-at-alpha-0 parity (max abs diff <= 1e-5), then ONNX export with sparse initializers and "
        "onnxruntime parity. Column 'modes': one graph, or two graphs where the forward branches on "
        "`self.training` in Python (the compiled module runs the one matching `.train()` / `.eval()`). "
        "Segmentation, detection, video and optical-flow models are compiled whole where torch.fx traces them, "
        "else in their task's part (column 'compiled': a detector's backbone, RAFT's encoders); a detector "
        "trains its step in train mode on synthetic boxes (masks, keypoints) and sums its loss dict; (a) runs "
        "per compiled part, (b)-(d) on the whole model, nested outputs included. "
        f"Real models at their default input size; models over {max_params / 1e6:.0f}M parameters run "
        "structurally on the meta device (numeric cells '-'). CI runs the structural part for every model "
        f"here and the numeric part on {len(zoo.NUMERIC)} models (`tests/test_zoo.py`), ONNX parity on "
        f"{len(exported_in_ci - hf)} of those and {len(exported_in_ci & hf)} HF classes (one model per mix of "
        "exporter ops, `zoo.ONNX_IN_CI`). "
        "HF transformers: each class `surgery.zoo.hf` has a small config for (`hf:<ModelClass>`, 32 x 32 images), "
        "compiled whole; where the forward reads the input's shape or dtype in Python, traced specialized to "
        "the example's shape (note 'traced for': '*' is the free batch; `surgery.fx.concrete`). CI runs every one "
        "numerically.\n",
        f"Machine: {machine()}\n",
    ]


def zoo_groups() -> dict[str, list[str]]:
    """``{section of docs/zoo.md: [model spec, ...]}``: the whole zoo."""
    from surgery.zoo import catalog as zoo

    return {
        "torchvision": zoo.torchvision_models(),
        "timm (one model per family)": [spec for _, spec in sorted(zoo.timm_families().items())],
        **{TASK_GROUPS[family]: specs for family, specs in zoo.task_models().items()},
        HF_GROUP: zoo.hf_models(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("torchvision", "timm", "hf"))
    parser.add_argument("--families", type=lambda text: text.split(","), metavar="F,F",
                        help=f"only these task families ({', '.join(TASK_GROUPS)}), merged into docs/zoo.md")
    parser.add_argument("--max-params", type=float, default=350e6)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--meta-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.max_params, args.meta_only)))
        return

    from surgery.zoo import catalog as zoo

    if args.families:
        unknown = set(args.families) - set(TASK_GROUPS)
        if unknown:
            parser.error(f"unknown families {sorted(unknown)}; choose from {', '.join(TASK_GROUPS)}")
        tasks = zoo.task_models(tuple(args.families))
        groups = {TASK_GROUPS[family]: specs for family, specs in tasks.items()}
    else:
        groups = zoo_groups()
    if args.only:
        groups = {k: v for k, v in groups.items() if k.lower().startswith(args.only)}
    results: dict[str, list[dict]] = {}
    for name, specs in groups.items():
        results[name] = []
        for i, spec in enumerate(specs, 1):
            row = cached_row(spec, args.max_params, args.timeout, args.fresh)
            results[name].append(row)
            status = "ok" if structural(row) and row.get("outputs_equal") is not False and row.get("onnx_parity") is not False else "FAIL"
            print(f"[{name} {i}/{len(specs)}] {status:4s} {spec} ({row.get('seconds')} s) {row.get('note', '')[:120]}", flush=True)
    if args.families or args.only:
        merge_doc(results, args.max_params)
    else:
        write_doc(results, args.max_params)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
