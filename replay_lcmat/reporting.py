"""Results files: the command that produced them, CSV and markdown writers, and the
continual-learning tables (per-experience accuracy rows -> mean ± std tables, CSV and plots).

A continual row is a dict with the keys of :data:`FIELDS` (one seed, policy, memory budget and
experience; ``accuracy`` in [0, 1]). The demo, the continual benchmark and the examples all
write with :func:`write_results`; the benchmarks write their own tables with :func:`write_csv`,
:func:`write_markdown` and :func:`command_markdown` (through ``benchmarks/_common.py``).
"""

from __future__ import annotations

import csv
import os
import shlex
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from replay_lcmat.files import atomic_write, atomic_write_text

FIELDS = ("seed", "policy", "per_class", "experience", "classes_seen", "memory_size", "accuracy")


# ---------------------------------------------------------------------------------------------
# Writing results files


def command_line(program: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this run: ``program`` then ``argv`` shell-quoted.

    Args:
        program: how the command is started, e.g. ``"python -m benchmarks.coreset"`` or
            ``"replay-lcmat demo"``.
        argv: the arguments after it; None: ``sys.argv[1:]`` (pass the ``argv`` a ``main(argv)``
            was given, so that a call from Python records its own arguments, not the caller's).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([program, shlex.join(args)]) if args else program


def command_markdown(command: str, where: str = "") -> str:
    """``command`` as results files record it: a ``Command`` line and a fenced bash block.

    ``where``: the folder to run it from, e.g. ``"repository root"`` (shown in parentheses).
    """
    return f"Command{f' ({where})' if where else ''}:\n\n```bash\n{command}\n```"


def write_csv(
    path: str | os.PathLike, rows: Sequence[dict], fields: Sequence[str] | None = None
) -> Path:
    """Write ``rows`` (dicts) as CSV with a header; the parent folder is created.

    ``fields``: the columns, in order (keys outside them are left out); None: every key of
    ``rows`` in order of first appearance (a row without a key leaves its cell empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (
        list(fields) if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    )

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)  # a reader never sees half a table


def append_csv(path: str | os.PathLike, rows: Sequence[dict], fields: Sequence[str]) -> Path:
    """Append ``rows`` to a CSV of columns ``fields`` (the header first when the file is new)
    and flush them to disk, so that a run stopped after this call keeps them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV with a header, as dicts of strings (``[]`` when there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_markdown(path: str | os.PathLike, lines: str | Iterable[str]) -> Path:
    """Write ``lines`` (joined with newlines) ending with one newline; the parent folder is
    created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = lines if isinstance(lines, str) else "\n".join(lines)
    return atomic_write_text(path, text.rstrip("\n") + "\n")


def markdown_table(rows: Sequence[dict]) -> str:
    """A markdown table of ``rows`` (dicts): one column per key, in order of first appearance;
    a row without a key leaves its cell empty."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Continual-learning tables


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1), 0 for a single value."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict]) -> dict[tuple[str, int], list[tuple[float, float, int]]]:
    """``{(policy, per_class): [(mean, std, n_seeds) per experience]}`` of the accuracies.

    ``std`` is the sample standard deviation over seeds (0 for one seed). Keys keep the order
    in which policies first appear in ``rows``.
    """
    by_key: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_key[r["policy"], int(r["per_class"])][int(r["experience"])].append(float(r["accuracy"]))
    out = {}
    for key, per_exp in by_key.items():
        stats = []
        for e in sorted(per_exp):
            mean, std = _mean_std(per_exp[e])
            stats.append((mean, std, len(per_exp[e])))
        out[key] = stats
    return out


def results_markdown(rows: Sequence[dict]) -> str:
    """One markdown table per memory budget: policies x experiences, accuracy in % (mean ± std
    over seeds), the column header giving the classes seen."""
    seen = {int(r["experience"]): int(r["classes_seen"]) for r in rows}
    summary = summarize(rows)
    lines = []
    for budget in sorted({b for _, b in summary}):
        seeds = sorted({int(r["seed"]) for r in rows if int(r["per_class"]) == budget})
        lines.append(
            f"Memory {budget} per class; test accuracy (%) on all classes seen so far; "
            f"mean ± std over {len(seeds)} seed(s) {seeds}"
        )
        lines.append("")
        header = [f"exp {e} ({seen[e]} cl.)" for e in sorted(seen)]
        lines.append("| policy | " + " | ".join(header) + " |")
        lines.append("|---|" + "---|" * len(header))
        for (policy, b), stats in summary.items():
            if b != budget:
                continue
            cells = [
                f"{100 * m:.2f} ± {100 * s:.2f}" if n > 1 else f"{100 * m:.2f}" for m, s, n in stats
            ]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def paired_difference(
    rows: Sequence[dict], policy: str, baseline: str
) -> dict[int, list[tuple[float, float, int]]]:
    """``{per_class: [(mean, std, n) per experience]}`` of ``policy``'s accuracy minus
    ``baseline``'s, paired by seed (same seed, budget and experience); std over seeds (n - 1).

    Raises:
        ValueError: no (seed, budget, experience) has both policies.
    """
    acc = {
        (r["policy"], int(r["seed"]), int(r["per_class"]), int(r["experience"])): float(
            r["accuracy"]
        )
        for r in rows
    }
    diffs: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (p, seed, budget, exp), value in acc.items():
        if p == policy and (baseline, seed, budget, exp) in acc:
            diffs[budget][exp].append(value - acc[baseline, seed, budget, exp])
    if not diffs:
        raise ValueError(
            f"no runs of both {policy!r} and {baseline!r} with the same seed, budget and "
            "experience; run both policies."
        )
    return {
        b: [(*_mean_std(per_exp[e]), len(per_exp[e])) for e in sorted(per_exp)]
        for b, per_exp in sorted(diffs.items())
    }


def comparison_text(rows: Sequence[dict], policy: str, baseline: str) -> str:
    """Plain sentences: ``policy`` minus ``baseline`` after each experience (percentage points,
    mean ± std over seeds) and at how many experiences it is ahead, for every budget."""
    lines = []
    for budget, stats in paired_difference(rows, policy, baseline).items():
        cells = ", ".join(f"{100 * m:+.1f} ± {100 * s:.1f}" for m, s, _ in stats)
        ahead = sum(m > 0 for m, _, _ in stats)
        overall = statistics.mean(m for m, _, _ in stats)
        if ahead == len(stats):
            verdict = f"{policy} is above {baseline} after every experience"
        elif ahead == 0:
            verdict = f"{policy} is NOT above {baseline} after any experience"
        else:
            verdict = f"{policy} is above {baseline} after {ahead} of {len(stats)} experiences"
        lines.append(
            f"memory {budget}/class: {policy} minus {baseline}, points after each experience "
            f"(mean ± std over {stats[0][2]} seed(s)): {cells}; average {100 * overall:+.1f}. "
            f"{verdict}."
        )
    return "\n".join(lines)


def plot_results(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy vs. classes seen, one panel per memory budget, one line per policy."""
    from matplotlib.figure import Figure

    summary = summarize(rows)
    seen = {int(r["experience"]): int(r["classes_seen"]) for r in rows}
    budgets = sorted({b for _, b in summary})
    fig = Figure(figsize=(5.5 * len(budgets), 4.2))
    for i, budget in enumerate(budgets):
        ax = fig.add_subplot(1, len(budgets), i + 1)
        for (policy, b), stats in summary.items():
            if b != budget:
                continue
            x = [seen[e] for e in sorted(seen)][: len(stats)]
            mean = [100 * m for m, _, _ in stats]
            std = [100 * s for _, s, _ in stats]
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=policy)
        ax.set_xlabel("classes seen")
        ax.set_ylabel("test accuracy on seen classes (%)")
        ax.set_title(f"memory {budget} per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_results(
    rows: Sequence[dict],
    out_dir: str | os.PathLike,
    stem: str,
    *,
    title: str = "",
    command: str | None = None,
    notes: str = "",
) -> dict[str, Path]:
    """Write ``<stem>.csv`` (one row per seed, policy, budget and experience), ``<stem>.md``
    (the tables, the exact command and notes) and ``<stem>.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{stem}.{k}" for k in ("csv", "md", "png")}
    write_csv(paths["csv"], rows, FIELDS)
    text = [f"# {title}" if title else "# Results", ""]
    if command:
        text += [command_markdown(command), ""]
    if notes:
        text += [notes, ""]
    text.append(results_markdown(rows))
    write_markdown(paths["md"], text)
    plot_results(rows, paths["png"], title)
    return paths
