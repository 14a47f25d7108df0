"""The ``virtual_screening`` workload: score every compound of a SMILES, CSV/TSV or SD library.

Options (all optional; the defaults fit the ``solubility_predictor`` example model)::

    format: smi                  # smi | csv | tsv | sdf (default: from the file name, .gz allowed)
    smiles_column: smiles        # CSV/TSV (default: the first of smiles, smi, canonical_smiles, ...)
    id_column: id                # CSV/TSV (default: the first of id, name, compound_id, ...; else none)
    id_property: ZINC_ID         # SDF: the SD property with the id (default: the title line)
    fingerprint_radius: 2        # Morgan fingerprint of the model input
    fingerprint_bits: 2048
    fingerprint_chirality: false
    input_name: fingerprint      # the model's input and output tensors
    output_name: log_s
    prediction_column: log_s     # the result column of the prediction (default: output_name)
    higher_is_better: true       # ranking of hits (true: most soluble first)
    descriptors: true            # add molecular weight, logP, HBD, HBA, TPSA, rule of five (~0.1 ms each)
    top_k: 100                   # sdf sink: how many of the best compounds it holds

An item is one library record (locator ``"line 12"`` or ``"record 3 (line 40)"``); a record RDKit
cannot read fails with RDKit's reason. Result rows: ``index, id, smiles`` (canonical), the prediction,
and with ``descriptors`` ``molecular_weight, logp, hbd, hba, tpsa, lipinski_violations,
lipinski_pass`` (see ``medserve.clinical.chemistry.drug_likeness``). Besides the generic sinks,
``sdf`` writes the ``top_k`` best compounds, ranked, as an SD file (2D depictions from the canonical
SMILES, the result columns and ``rank`` as SD properties, the id as the title).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rdkit import Chem

from medserve.clinical.chemistry.compound import Compound, UnreadableLibrary
from medserve.clinical.chemistry.compound_library import CompoundLibrary
from medserve.clinical.chemistry.drug_likeness import drug_likeness
from medserve.clinical.chemistry.fingerprints import MorganFingerprinter
from medserve.clinical.chemistry.sdf_writer import write_sdf
from medserve.jobs.workload import Item, ItemFailure, SourceError


@dataclass(frozen=True)
class ScreeningOptions:
    """The workload's options, with their defaults (see the module docstring)."""

    format: str | None = None
    smiles_column: str | None = None
    id_column: str | None = None
    id_property: str | None = None
    fingerprint_radius: int = 2
    fingerprint_bits: int = 2048
    fingerprint_chirality: bool = False
    input_name: str = "fingerprint"
    output_name: str = "log_s"
    prediction_column: str | None = None
    higher_is_better: bool = True
    descriptors: bool = True
    top_k: int = 100

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> ScreeningOptions:
        """Validated options; ``ValueError`` names an unknown option or a value of the wrong kind."""
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
        for name, value in options.items():
            default = known[name].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"option {name} must be true or false, got {value!r}")
            elif isinstance(default, int):
                least = 0 if name == "fingerprint_radius" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise ValueError(f"option {name} must be an integer >= {least}, got {value!r}")
            elif (value is not None or default is not None) and (
                not isinstance(value, str) or not value.strip()
            ):
                raise ValueError(f"option {name} must be a non-empty string, got {value!r}")
        return cls(**options)


DESCRIPTOR_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("molecular_weight", pa.float32()),
    ("logp", pa.float32()),
    ("hbd", pa.int32()),
    ("hba", pa.int32()),
    ("tpsa", pa.float32()),
    ("lipinski_violations", pa.int32()),
    ("lipinski_pass", pa.bool_()),
)
"""The descriptor columns of the result rows (``descriptors: true``)."""


class VirtualScreeningWorkload:
    """Virtual screening of one compound library (see the module docstring for the options)."""

    kind = "virtual_screening"
    rank_by: tuple[str, bool]

    def __init__(self, source: Path, options: Mapping[str, Any]) -> None:
        self.options = settings = ScreeningOptions.parse(options)
        self.prediction_column = settings.prediction_column or settings.output_name
        if self.prediction_column in ("index", "id", "smiles", *(name for name, _ in DESCRIPTOR_COLUMNS)):
            raise ValueError(f"prediction_column {self.prediction_column!r} clashes with a result column")
        self.rank_by = (self.prediction_column, settings.higher_is_better)
        self.fingerprinter = MorganFingerprinter(
            settings.fingerprint_radius, settings.fingerprint_bits, chirality=settings.fingerprint_chirality
        )
        try:
            self.library = CompoundLibrary.open(
                Path(source),
                library_format=settings.format,
                smiles_column=settings.smiles_column,
                id_column=settings.id_column,
                id_property=settings.id_property,
            )
        except UnreadableLibrary as error:
            raise SourceError(str(error)) from None

    def items(self) -> Iterator[Item | ItemFailure]:
        """The library's records in file order; unreadable ones as failures with RDKit's reason."""
        seen = 0
        try:
            for entry in self.library.entries():
                seen = entry.index + 1
                if entry.compound is None:
                    yield ItemFailure(entry.index, entry.locator, entry.reason)
                else:
                    yield Item(entry.index, entry.locator, entry.compound)
        except (OSError, EOFError, zlib.error) as error:
            raise SourceError(f"{self.library.path}: unreadable after {seen} records: {error}") from None

    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        """Morgan fingerprints ``[n, bits]`` uint8 (0/1) under the model's input name."""
        molecules = [_compound(item).molecule for item in items]
        try:
            return {self.options.input_name: self.fingerprinter(molecules)}, list(items), []
        except (RuntimeError, ValueError):  # one molecule spoils the batch: find it
            kept: list[Item] = []
            failures: list[ItemFailure] = []
            for item, molecule in zip(items, molecules, strict=True):
                try:
                    self.fingerprinter([molecule])
                except (RuntimeError, ValueError) as error:
                    failures.append(ItemFailure(item.index, item.locator, f"fingerprint failed: {error}"))
                else:
                    kept.append(item)
            inputs = self.fingerprinter([_compound(item).molecule for item in kept])
            return {self.options.input_name: inputs}, kept, failures

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        """``index, id, smiles, <prediction>`` and, with ``descriptors``, the descriptor columns."""
        name = self.options.output_name
        if name not in outputs:
            given = ", ".join(outputs) or "none"
            raise ValueError(
                f"the model gave no output {name!r} (it gave {given}); set the option output_name"
            )
        values = np.asarray(outputs[name])
        if values.size != len(items):
            raise ValueError(
                f"output {name!r} has shape {values.shape}; expected one value per compound ({len(items)})"
            )
        compounds = [_compound(item) for item in items]
        columns: dict[str, pa.Array] = {
            "index": pa.array([item.index for item in items], pa.int64()),
            "id": pa.array([compound.id for compound in compounds], pa.string()),
            "smiles": pa.array([Chem.MolToSmiles(compound.molecule) for compound in compounds], pa.string()),
            self.prediction_column: pa.array(values.reshape(-1).astype(np.float32), pa.float32()),
        }
        if self.options.descriptors:
            found = [drug_likeness(compound.molecule) for compound in compounds]
            for name, datatype in DESCRIPTOR_COLUMNS:
                columns[name] = pa.array([getattr(entry, name) for entry in found], datatype)
        return pa.table(columns)

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        """``sdf``: the ``top_k`` best compounds by the prediction, ranked, as an SD file."""
        if sink_format != "sdf":
            return False
        top_k = (
            ScreeningOptions.parse({"top_k": options["top_k"]}).top_k
            if "top_k" in options
            else self.options.top_k
        )
        best = _best(parts, self.rank_by, top_k)
        write_sdf(path, _sdf_records(best) if best is not None else [])
        return True


def _best(parts: Iterator[pa.Table], rank_by: tuple[str, bool], top_k: int) -> pa.Table | None:
    """The ``top_k`` rows with the best finite predictions (ties in index order), ranked."""
    column, descending = rank_by
    order = "descending" if descending else "ascending"
    best: pa.Table | None = None
    for table in parts:
        if column not in table.column_names:
            raise ValueError(f"the results have no column {column!r} ({', '.join(table.column_names)})")
        finite = pc.is_finite(table[column].cast(pa.float64()))
        table = table.filter(pc.fill_null(finite, False))
        merged = table if best is None else pa.concat_tables([best, table.cast(best.schema)])
        best = merged.sort_by([(column, order), ("index", "ascending")]).slice(0, top_k)
    return best


def _sdf_records(table: pa.Table) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    for rank, row in enumerate(table.to_pylist(), start=1):
        smiles = row.pop("smiles")
        properties = {"rank": rank, **row}
        yield smiles, row.get("id"), properties


def _compound(item: Item) -> Compound:
    if not isinstance(item.payload, Compound):
        raise TypeError(f"{item.locator}: expected a compound, got {type(item.payload).__name__}")
    return item.payload
