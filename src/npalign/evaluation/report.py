"""results.json, a Markdown table and a PNG plot of accuracy against context size (L3, evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npalign.utils.io import atomic_path, write_json


def markdown_table(results: dict[str, Any], column: str = "m") -> str:
    """Accuracy (mean ± s.e.m., percent) per model and context size, the ceiling as the last row.

    `column` names the x of the header cells: m (context size) or k (queries asked, `evaluation/elicit.py`).
    """
    models = results["models"]
    contexts = sorted({int(m) for record in models.values() for m in record["accuracy"]})
    header = "| model | " + " | ".join(f"{column} = {m}" for m in contexts) + " |"
    lines = [header, "|---|" + "---|" * len(contexts)]
    for name, record in models.items():
        cells = []
        for m in contexts:
            cell = record["accuracy"].get(str(m))
            cells.append(f"{cell['mean']:.2f} ± {cell['sem']:.2f}" if cell else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results.get("ceiling"):
        sems = results.get("ceiling_sem", {})
        cells = []
        for m in contexts:
            value = results["ceiling"].get(str(m))
            sem = sems.get(str(m), 0.0)
            cells.append("" if value is None else f"{value:.2f}" + (f" ± {sem:.2f}" if sem else ""))
        lines.append("| Bayes ceiling | " + " | ".join(cells) + " |")
    eces = {name: record["ece"] for name, record in models.items() if record.get("ece")}
    if eces:
        # Elicitation trusts the model's own probabilities, so their calibration is reported beside accuracy.
        lines += ["", "ECE of p(chosen > rejected) (10 bins, both orders of each target):", "", header]
        lines.append("|---|" + "---|" * len(contexts))
        for name, ece in eces.items():
            cells = [f"{ece[str(m)]:.4f}" if str(m) in ece else "" for m in contexts]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(
    results: dict[str, Any], path: str | Path, title: str = "", xlabel: str = "context size m (pairs)"
) -> None:
    """Accuracy against m (or k queries) for every model (error bars = s.e.m.), the ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for name, record in results["models"].items():
        contexts = sorted(int(m) for m in record["accuracy"])
        means = [record["accuracy"][str(m)]["mean"] for m in contexts]
        sems = [record["accuracy"][str(m)]["sem"] for m in contexts]
        axis.errorbar(contexts, means, yerr=sems, marker="o", capsize=3, label=name)
    if results.get("ceiling"):
        contexts = sorted(int(m) for m in results["ceiling"])
        axis.plot(contexts, [results["ceiling"][str(m)] for m in contexts], "k--", label="Bayes ceiling")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("accuracy on unseen targets (%)")
    axis.set_title(title or "Accuracy against context size")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def report_paths(out_dir: str | Path, json_name: str = "results.json") -> dict[str, Path]:
    """The files `write_report` writes: {"json", "markdown", "plot"} -> path."""
    out_dir, stem = Path(out_dir), Path(json_name).stem
    return {
        "json": out_dir / json_name,
        "markdown": out_dir / f"{stem}.md",
        "plot": out_dir / ("accuracy.png" if json_name == "results.json" else f"{stem}.png"),
    }


def write_report(
    results: dict[str, Any], out_dir: str | Path, title: str = "", json_name: str = "results.json"
) -> dict[str, Path]:
    """Write `json_name`, a Markdown table and a PNG plot into `out_dir`; return their paths.

    With the default name the files are results.json, results.md and accuracy.png; with another
    JSON name (e.g. np.json) they are np.json, np.md and np.png.
    """
    paths = report_paths(out_dir, json_name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(results, paths["json"])
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text((f"# {title}\n\n" if title else "") + markdown_table(results))
    plot_accuracy(results, paths["plot"], title)
    return paths
