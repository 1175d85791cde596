"""The evaluation report beside the model: report.md + PNG plots (matplotlib, Agg)."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from dser_spark.config import Config


def metric_table(rows: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One row per model, one column per metric@k for ``protocol`` (model order kept)."""
    sub = rows[rows["protocol"] == protocol].copy()
    if sub.empty:
        return pd.DataFrame()
    sub["column"] = [m if m == "MRR" else f"{m}@{k}" for m, k in zip(sub["metric"], sub["k"])]
    order = list(dict.fromkeys(sub["model"]))
    table = sub.pivot_table(index="model", columns="column", values="value", aggfunc="first").reindex(order)
    metric_order = {"HR": 0, "Recall": 1, "NDCG": 2, "MRR": 3, "Coverage": 4}
    cols = sorted(table.columns, key=lambda c: (metric_order.get(c.split("@")[0], 9),
                                                int(c.split("@")[1]) if "@" in c else 0))
    return table[cols]


def markdown(table: pd.DataFrame, notes: dict[str, str] | None = None) -> str:
    """A Markdown table with 4-decimal values (and an optional notes column)."""
    if table.empty:
        return "_none_\n"
    cols = list(table.columns) + (["notes"] if notes else [])
    lines = ["| model | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(table.columns)
             + (" --- |" if notes else "")]
    for model, row in table.iterrows():
        cells = [f"{v:.4f}" for v in row.to_numpy()]
        if notes:
            cells.append(notes.get(model, ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(directory: Path, run_id: str, rows: pd.DataFrame, histories: dict[str, list[dict]],
                 notes: dict[str, str], cfg: Config) -> Path:
    """Write report.md, metrics.png and training.png into ``directory``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    k = cfg.evaluate.k
    sampled, full = metric_table(rows, "sampled"), metric_table(rows, "full")
    # metrics by model
    shown = [("sampled", f"HR@{k}"), ("sampled", f"NDCG@{k}"), ("full", f"Recall@{k}"), ("full", f"NDCG@{k}")]
    shown = [(p, c) for p, c in shown if c in (sampled if p == "sampled" else full).columns]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    models = list(sampled.index)
    width = 0.8 / max(len(shown), 1)
    for j, (protocol, col) in enumerate(shown):
        table = sampled if protocol == "sampled" else full
        ax.bar([x + j * width for x in range(len(models))], table.reindex(models)[col].to_numpy(), width,
               label=f"{col} ({protocol})")
    ax.set_xticks([x + width * (len(shown) - 1) / 2 for x in range(len(models))], models)
    ax.set_ylabel("value")
    ax.set_title(f"Test metrics by model — run {run_id}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "metrics.png", dpi=110)
    plt.close(fig)
    # loss and validation HR by epoch
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        sel = [h for h in hist if h.get("phase", "select") == "select"]
        pts = [(h["epoch"], h["loss"]) for h in sel if h.get("loss") is not None]
        if pts:
            ax_loss.plot(*zip(*pts), marker="o", label=name)
        val = [(h["epoch"], h["val_hr"]) for h in sel if h.get("val_hr") is not None]
        if val:
            ax_val.plot(*zip(*val), marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel=f"training loss ({cfg.train.loss})", title="Loss (train-only fit)")
    ax_val.set(xlabel="epoch (0 = untrained)", ylabel=f"validation HR@{k}", title="Validation HR by epoch")
    for a in (ax_loss, ax_val):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "training.png", dpi=110)
    plt.close(fig)
    def cell(value) -> str:
        return "" if value is None else f"{value:.4f}"

    epochs_table = "\n".join(
        f"| {name} | {h['epoch']} | {cell(h.get('loss'))} | {cell(h.get('val_hr'))} | {'yes' if h.get('best') else ''} |"
        for name, hist in histories.items() for h in hist if h.get("phase", "select") == "select")
    text = f"""# dser-spark evaluation report

Run `{run_id}`, data `{cfg.data.path}` ({cfg.data.format}), written {_dt.datetime.now():%Y-%m-%d %H:%M}.

Protocol: leave-latest-out; the second-latest item is the validation item and
every choice (epochs by early stopping, ALS rank and regularisation) is made on
it with a model fit on train only; each model (Doc2Vec included) is then refit
on train + validation and scored once on the test item. Sampled = the test item
among {cfg.split.eval_negatives} sampled items the user never touched (NCF);
full = among every item not in the user's fit history. Ties count against the
test item.

## Sampled protocol (test)

{markdown(sampled, notes)}
## Full ranking (test)

{markdown(full)}
Coverage@{cfg.evaluate.coverage_k} = share of the catalogue in at least one user's top {cfg.evaluate.coverage_k}.

![metrics by model](metrics.png)

## Training (train-only fit, early stopping on validation HR@{k})

| model | epoch | loss | validation HR@{k} | best |
| --- | ---: | ---: | ---: | --- |
{epochs_table}

![loss and validation HR by epoch](training.png)

## Settings

model: `{cfg.model}`
train: `{cfg.train}`
embed: `{cfg.embed}`, recent windows: k={cfg.recent.k} + {cfg.recent.windows}
"""
    (directory / "report.md").write_text(text)
    return directory / "report.md"
