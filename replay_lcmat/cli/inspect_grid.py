"""``replay-lcmat inspect grid``, and the kinds of file ``inspect`` reads: each file given to
``--selection``, ``--condensed`` or ``--memory`` is recognised from its ``format`` field first,
so a file of another kind stops with an error naming it, its kind and the option it belongs to."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from replay_lcmat.condensation.storage import FORMAT as SYNTHETIC_FORMAT
from replay_lcmat.data import load_dataset
from replay_lcmat.diagnostics import (
    load_class_memory,
    load_condensed,
    plot_memory_grid,
    selection_images,
)
from replay_lcmat.files import read_torch_file
from replay_lcmat.memory.store import MEMORY_FORMAT
from replay_lcmat.selection.record import FORMAT as SELECTION_FORMAT
from replay_lcmat.selection.record import load_selection

RUN_FORMAT = "replay-lcmat/avalanche-run"  # replay_lcmat.strategies.save_run (the core never
# imports the Avalanche adapters, so the name is repeated here)

KINDS = {
    "selection": (SELECTION_FORMAT, "a selection file (replay-lcmat select --out)", "--selection"),
    "condensed": (SYNTHETIC_FORMAT, "a synthetic set (replay-lcmat condense --out)", "--condensed"),
    "memory": (MEMORY_FORMAT, "a class memory (ClassMemory.save)", "--memory"),
    "run": (RUN_FORMAT, "an Avalanche run checkpoint (replay_lcmat.strategies.save_run)", None),
}


def file_kind(path: str | Path) -> str:
    """The kind of a replay-lcmat file (a key of :data:`KINDS`), from its ``format`` field.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file of no known kind (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; check the path.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a file replay-lcmat writes.")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if record is None:
        try:
            record = read_torch_file(
                path, "file", "replay-lcmat select, condense or ClassMemory.save"
            )
        except ValueError:
            raise ValueError(
                f"{path} is neither JSON nor a torch file: not a file replay-lcmat writes."
            ) from None
    found = record.get("format") if isinstance(record, dict) else None
    for kind, (name, _, _) in KINDS.items():
        if found == name:
            return kind
    if isinstance(record, dict) and "by_class" in record:
        raise ValueError(
            f"{path} is a selection file of an older replay-lcmat (no format field); write it "
            "again with `replay-lcmat select --out`."
        )
    raise ValueError(
        f"{path} is not a file replay-lcmat writes (format {found!r}); expected one of: "
        + "; ".join(what for _, what, _ in KINDS.values())
        + "."
    )


def check_kind(path: str | Path, expected: str) -> None:
    """Raise unless ``path`` is of kind ``expected``; the message says where it belongs."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file at {path}; expected {KINDS[expected][1]}.")
    found = file_kind(path)
    if found == expected:
        return
    _, what, option = KINDS[found]
    where = (
        f"pass it with {option}"
        if option
        else "load it with replay_lcmat.strategies.load_run; its memories are saved "
        "separately with ClassMemory.save for --memory"
    )
    raise ValueError(
        f"{path} is {what}, not {KINDS[expected][1]}, so it cannot go to "
        f"{KINDS[expected][2]}: {where}."
    )


def load_train(args: argparse.Namespace, source: str | None = None):
    train, _ = load_dataset(
        source or args.data,
        root=args.data_root,
        download=args.download,
        cache_dir=args.cache_dir,
        progress=False,
    )
    return train


def unique_names(names: list[str], paths: list[str]) -> list[str]:
    """Names as given; where two are equal the file stem is appended, then a number."""
    out = [
        f"{name} ({Path(path).stem})" if names.count(name) > 1 else name
        for name, path in zip(names, paths, strict=True)
    ]
    return [f"{n} #{out[:i].count(n) + 1}" if out.count(n) > 1 else n for i, n in enumerate(out)]


def run_grid(args: argparse.Namespace) -> int:
    sources = (
        [("selection", p) for p in args.selection]
        + [("condensed", p) for p in args.condensed]
        + [("memory", p) for p in args.memory]
    )
    if not sources:
        raise ValueError("nothing to show; pass --selection, --condensed and/or --memory files.")
    if args.names is not None and len(args.names) != len(sources):
        raise ValueError(
            f"{len(args.names)} --names for {len(sources)} sources; give one name per file, in "
            "the order --selection, --condensed, --memory."
        )
    if (args.condensed or args.memory) and args.data is None:
        raise ValueError(
            "--condensed and --memory files hold normalised images without statistics: pass "
            "--data (the dataset they were made from) for its mean/std and class names."
        )
    for kind, path in sources:  # every file is of its option's kind, before any loading
        check_kind(path, kind)
    datasets: dict[str, object] = {}

    def train_of(source: str):
        if source not in datasets:
            datasets[source] = load_train(args, source)
        return datasets[source]

    sets = []
    for kind, path in sources:
        if kind == "selection":
            source = args.data or load_selection(path).data
            sets.append(selection_images(path, train_of(source) if source else None))
        else:
            train = train_of(args.data)
            load = load_condensed if kind == "condensed" else load_class_memory
            sets.append(load(path, mean=train.mean, std=train.std, classes=train.classes))
    names = args.names or unique_names([s.name for s in sets], [p for _, p in sources])
    sets = [replace(s, name=n) for s, n in zip(sets, names, strict=True)]
    out = plot_memory_grid(
        sets,
        args.out,
        max_per_class=args.max_per_class,
        columns=args.columns,
        classes=args.classes,
    )
    print(f"memory grid of {', '.join(names)} written to {out}")
    return 0
