"""The pull-request report: what a change does to params, metrics and plots, as one Markdown file.

Params and metrics come from ``dvc params diff --md`` and ``dvc metrics diff
--md`` against a base revision. Plots come from ``dvc plots diff --json``
(Vega-Lite specs with both revisions' data inline) rendered to PNG with
``vl-convert``, offline, so the report shows the base and the change overlaid
where a pull-request comment can display them (CI posts it with CML).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .dvc_run import run_dvc


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "plot"


def render_plots(repo: Path, base: str, images_dir: Path) -> list[tuple[str, Path]]:
    """Render every plot of ``dvc plots diff <base>`` to PNG; returns ``(title, path)`` pairs."""
    import vl_convert

    images_dir.mkdir(parents=True, exist_ok=True)
    specs = json.loads(run_dvc(repo, "plots", "diff", base, "--json"))
    rendered = []
    for plot_id, entries in specs.get("data", specs).items():
        for number, entry in enumerate(entries):
            content = entry.get("content") if isinstance(entry, dict) else None
            if not content or entry.get("type") != "vega":
                continue
            title = plot_id if len(entries) == 1 else f"{plot_id} ({number + 1})"
            path = images_dir / f"{_slug(title)}.png"
            path.write_bytes(vl_convert.vegalite_to_png(content, scale=1.5))
            rendered.append((title, path))
    return rendered


def write_report(repo: Path, base: str, out: Path) -> Path:
    """Write the Markdown report comparing the workspace with ``base``; images go beside it."""
    params = run_dvc(repo, "params", "diff", base, "--md").strip() or "No params changed."
    metrics = run_dvc(repo, "metrics", "diff", base, "--md", "--precision", "4").strip() or "No metrics changed."
    plots = render_plots(repo, base, out.parent / "report_plots")
    lines = [
        f"# Pipeline report: workspace vs `{base}`",
        "",
        "## Params",
        "",
        params,
        "",
        "## Metrics",
        "",
        metrics,
        "",
        "## Plots",
        "",
    ]
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}]({path.relative_to(out.parent)})", ""]
    out.write_text("\n".join(lines) + "\n")
    return out
