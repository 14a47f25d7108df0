"""Drug-discovery screening: library reading (.smi, CSV/TSV, SDF, gzip) with bad records, RDKit's
reasons, fingerprints against RDKit's bit vectors, ESOL and rule-of-five values against hand
calculations, the synthetic library, the ``solubility_predictor`` example model and the
``virtual_screening`` workload end to end in onnxruntime (with its ranked SDF sink)."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdChemReactions, rdFingerprintGenerator

from medserve.clinical.chemistry.compound import UnreadableMolecule, parse_smiles
from medserve.clinical.chemistry.drug_likeness import drug_likeness
from medserve.clinical.chemistry.fingerprints import MorganFingerprinter
from medserve.clinical.chemistry.solubility import esol_log_solubility, esol_terms
from medserve.demo import building_blocks as blocks
from medserve.demo.compound_library import (
    MAX_MOLECULAR_WEIGHT,
    RECIPES,
    synthetic_library,
    write_example_chemistry,
)
from medserve.jobs.workload import Item, ItemFailure, SourceError
from medserve.jobs.workloads.chemistry import VirtualScreeningWorkload


def split(workload: VirtualScreeningWorkload) -> tuple[list[Item], list[ItemFailure]]:
    entries = list(workload.items())
    assert [entry.index for entry in entries] == list(range(len(entries)))
    return [e for e in entries if isinstance(e, Item)], [e for e in entries if isinstance(e, ItemFailure)]


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


# -- reading libraries --------------------------------------------------------------------------


def test_smi_file_with_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "library.smi"
    path.write_text(
        "SMILES Name\n"  # 1 header
        "CCO ethanol\n"  # 2
        "\n"  # 3 blank: not a record
        "# a comment\n"  # 4
        "C1CC broken ring\n"  # 5
        "c1ccccc1\n"  # 6 no id
        "N(C)(C)(C)(C)C pentavalent\n"  # 7
        "CC(=O)Oc1ccccc1C(=O)O\taspirin (acetylsalicylic acid)\n"  # 8 id with spaces
        "CC( open\n",  # 9
        encoding="utf-8",
    )
    items, failures = split(VirtualScreeningWorkload(path, {}))
    assert [(i.index, i.locator, i.payload.id) for i in items] == [
        (0, "line 2", "ethanol"),
        (2, "line 6", None),
        (4, "line 8", "aspirin (acetylsalicylic acid)"),
    ]
    assert Chem.MolToSmiles(items[2].payload.molecule) == canonical("CC(=O)Oc1ccccc1C(=O)O")
    assert [(f.index, f.locator) for f in failures] == [(1, "line 5"), (3, "line 7"), (5, "line 9")]
    assert "unclosed ring" in failures[0].reason
    assert "Explicit valence for atom # 0 N, 5" in failures[1].reason
    assert "syntax error" in failures[2].reason or "parentheses" in failures[2].reason
    assert all("[" not in f.reason[:3] for f in failures)  # RDKit's timestamps are gone


def test_rdkit_errors_are_captured_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnreadableMolecule, match="Can't kekulize mol"):
        parse_smiles("c1cccc1")
    with pytest.raises(UnreadableMolecule, match="empty SMILES"):
        parse_smiles("  ")
    assert parse_smiles(" CCO ").GetNumAtoms() == 3
    captured = capfd.readouterr()
    assert "kekulize" not in captured.err.lower() and "kekulize" not in captured.out.lower()


def test_without_error_capture_the_reason_is_generic(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # RDKit before 2026.03 has no CaptureErrorLog: the log is only silenced.
    monkeypatch.delattr(rdBase, "CaptureErrorLog")
    with pytest.raises(UnreadableMolecule, match="RDKit could not parse SMILES 'C1CC'"):
        parse_smiles("C1CC")
    assert "unclosed ring" not in capfd.readouterr().err


def test_csv_with_quoting_short_rows_and_empty_smiles(tmp_path: Path) -> None:
    path = tmp_path / "library.csv"
    path.write_text(
        "Name,SMILES,activity\n"  # 1
        '"cpd, one",CCN,1.5\n'  # 2
        '"cpd\ntwo",c1ccncc1,2\n'  # 3-4: a quoted id over two lines
        "short\n"  # 5: no SMILES field
        ",,\n"  # 6: blank row, not a record
        "cpd4,,3\n"  # 7: empty SMILES
        "cpd5,C1=CC=CC=C1X,4\n"  # 8: bad SMILES
        ",CC(C)O,5\n",  # 9: empty id
        encoding="utf-8",
    )
    items, failures = split(VirtualScreeningWorkload(path, {}))
    assert [(i.index, i.locator, i.payload.id) for i in items] == [
        (0, "line 2", "cpd, one"),
        (1, "line 3", "cpd\ntwo"),
        (5, "line 9", None),
    ]
    assert [(f.index, f.locator) for f in failures] == [(2, "line 5"), (3, "line 7"), (4, "line 8")]
    assert "1 fields" in failures[0].reason and "empty SMILES" in failures[1].reason
    assert "syntax error" in failures[2].reason


def test_tsv_with_named_columns_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "library.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("structure\tcode\tsmiles_note\nCCO\tA1\tx\nCC(=O)O\tA2\ty\n")
    items, failures = split(
        VirtualScreeningWorkload(path, {"smiles_column": "structure", "id_column": "CODE"})
    )
    assert failures == []
    assert [(i.payload.id, Chem.MolToSmiles(i.payload.molecule)) for i in items] == [
        ("A1", "CCO"),
        ("A2", "CC(=O)O"),
    ]


def _sdf_block(smiles: str, title: str, properties: dict[str, str]) -> str:
    molecule = Chem.MolFromSmiles(smiles)
    molecule.SetProp("_Name", title)
    text = Chem.MolToMolBlock(molecule)
    for name, value in properties.items():
        text += f"> <{name}>\n{value}\n\n"
    return text


def _pentavalent_carbon_block() -> str:
    """A hand-written molfile whose first carbon has five single bonds: RDKit refuses it."""
    atoms = "".join(
        f"{float(k):10.4f}{0.0:10.4f}{0.0:10.4f} C   0  0  0  0  0  0  0  0  0  0  0  0\n" for k in range(6)
    )
    bonds = "".join(f"{1:3d}{k:3d}  1  0\n" for k in range(2, 7))
    return f"bad\n  hand-written\n\n  6  5  0  0  0  0  0  0  0  0999 V2000\n{atoms}{bonds}M  END\n"


def _sdf_library(tmp_path: Path, name: str) -> tuple[Path, list[int]]:
    records = [
        _sdf_block("CCO", "ethanol", {"ZINC_ID": "Z1"}),
        _pentavalent_carbon_block(),
        _sdf_block("c1ccccc1O", "phenol", {"ZINC_ID": "Z3"}),
        "garbage title\nnot a\nmolfile at all\n",
        _sdf_block("CC(=O)N", "", {"ZINC_ID": "Z5"}),
    ]
    starts: list[int] = []
    text = ""
    line = 1
    for number, record in enumerate(records):
        starts.append(line)
        terminator = "$$$$\n" if number < len(records) - 1 else ""  # the last one lacks $$$$
        text += record + terminator
        line += record.count("\n") + terminator.count("\n")
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path, starts


@pytest.mark.parametrize("name", ["library.sdf", "library.sdf.gz"])
def test_sdf_records_with_bad_ones(tmp_path: Path, name: str) -> None:
    path, starts = _sdf_library(tmp_path, name)
    items, failures = split(VirtualScreeningWorkload(path, {}))
    assert [(i.index, i.locator, i.payload.id) for i in items] == [
        (0, f"record 1 (line {starts[0]})", "ethanol"),
        (2, f"record 3 (line {starts[2]})", "phenol"),
        (4, f"record 5 (line {starts[4]})", None),  # empty title
    ]
    assert [Chem.MolToSmiles(i.payload.molecule) for i in items] == ["CCO", "Oc1ccccc1", "CC(N)=O"]
    assert [(f.index, f.locator) for f in failures] == [
        (1, f"record 2 (line {starts[1]})"),
        (3, f"record 4 (line {starts[3]})"),
    ]
    assert "Explicit valence for atom # 0 C, 5" in failures[0].reason
    # RDKit's own line numbers are turned into the file's: the 4th line of record 4 is "$$$$".
    assert failures[1].reason == f"Counts line too short: '$$$$' on line {starts[3] + 3}"
    by_property, _ = split(VirtualScreeningWorkload(path, {"id_property": "ZINC_ID"}))
    assert [i.payload.id for i in by_property] == ["Z1", "Z3", "Z5"]


def test_unreadable_sources_are_refused(tmp_path: Path) -> None:
    def refused(path: Path, match: str, options: dict[str, object] | None = None) -> None:
        with pytest.raises(SourceError, match=match):
            VirtualScreeningWorkload(path, options or {})

    refused(tmp_path / "missing.smi", "no such file")
    refused(tmp_path, "not a regular file")
    (tmp_path / "library.txt").write_text("CCO\n")
    refused(tmp_path / "library.txt", "cannot tell the library format")
    (tmp_path / "binary.smi").write_bytes(b"CCO\x00\x01\x02")
    refused(tmp_path / "binary.smi", "binary content")
    (tmp_path / "broken.sdf.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    refused(tmp_path / "broken.sdf.gz", "unreadable gzip data")
    (tmp_path / "table.sdf").write_text("a,b\n1,2\n")
    refused(tmp_path / "table.sdf", "does not look like an SD file")
    (tmp_path / "empty.csv").write_text("")
    refused(tmp_path / "empty.csv", "no header row")
    (tmp_path / "nosmiles.csv").write_text("id,structure\n1,CCO\n")
    refused(tmp_path / "nosmiles.csv", "no SMILES column .*'id', 'structure'")
    refused(
        tmp_path / "nosmiles.csv",
        "no id column 'compound'",
        {"smiles_column": "structure", "id_column": "compound"},
    )
    refused(tmp_path / "library.txt", "unknown library format 'mol2'", {"format": "mol2"})
    # A format named explicitly lets any file name through.
    assert (
        split(VirtualScreeningWorkload(tmp_path / "library.txt", {"format": "smi"}))[0][0].payload.id is None
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"radius": 2}, "unknown option"),
        ({"fingerprint_bits": "2048"}, "fingerprint_bits must be an integer"),
        ({"fingerprint_bits": 0}, "fingerprint_bits must be an integer >= 1"),
        ({"fingerprint_radius": 9}, "radius must be an integer in 0..6"),
        ({"descriptors": "yes"}, "descriptors must be true or false"),
        ({"input_name": ""}, "input_name must be a non-empty string"),
        ({"prediction_column": "smiles"}, "clashes"),
        ({"top_k": True}, "top_k must be an integer"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, object], match: str) -> None:
    path = tmp_path / "library.smi"
    path.write_text("CCO\n")
    with pytest.raises(ValueError, match=match):
        VirtualScreeningWorkload(path, options)


# -- fingerprints and properties ----------------------------------------------------------------

SAMPLE = [
    "CCO",
    "c1ccccc1O",
    "CC(=O)Oc1ccccc1C(=O)O",
    "C[C@H](N)C(=O)O",
    "C[C@@H](N)C(=O)O",
    "O=C(NC1CC1)c1cncc(Br)c1",
]


@pytest.mark.parametrize(("radius", "bits", "chirality"), [(2, 2048, False), (3, 1024, True), (1, 64, False)])
def test_fingerprints_equal_rdkit_bit_vectors(radius: int, bits: int, chirality: bool) -> None:
    molecules = [Chem.MolFromSmiles(smiles) for smiles in SAMPLE]
    array = MorganFingerprinter(radius, bits, chirality=chirality)(molecules)
    assert array.shape == (len(SAMPLE), bits) and array.dtype == np.uint8
    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=radius, fpSize=bits, includeChirality=chirality
    )
    for row, molecule in zip(array, molecules, strict=True):
        expected = np.zeros(bits, dtype=np.float64)
        DataStructs.ConvertToNumpyArray(generator.GetFingerprint(molecule), expected)
        np.testing.assert_array_equal(row, expected.astype(np.uint8))
    # Chirality tells the two alanines apart only when asked to.
    assert np.array_equal(array[3], array[4]) is not chirality
    assert MorganFingerprinter()([]).shape == (0, 2048)


def test_esol_against_hand_calculations() -> None:
    # Wildman-Crippen contributions: aromatic CH carbon (C18) 0.1581, aromatic C bearing a carbon
    # (C21) 0.1360, methyl on an aromatic ring (C8) 0.08452, CH3 (C1) 0.1441, CH2 bearing O (C3)
    # -0.2035, alcohol O (O2) -0.2893, H on carbon (H1) 0.123, alcohol H (H2) -0.2677.
    # Average masses C 12.011, H 1.008, O 15.999.
    expected = {
        "c1ccccc1": (6 * 0.1581 + 6 * 0.123, 6 * 12.011 + 6 * 1.008, 0, 1.0),
        "CCO": (0.1441 - 0.2035 - 0.2893 + 5 * 0.123 - 0.2677, 2 * 12.011 + 6 * 1.008 + 15.999, 0, 0.0),
        "Cc1ccccc1": (5 * 0.1581 + 0.1360 + 0.08452 + 8 * 0.123, 7 * 12.011 + 8 * 1.008, 0, 6 / 7),
    }
    for smiles, (logp, weight, rotatable, aromatic) in expected.items():
        terms = esol_terms(Chem.MolFromSmiles(smiles))
        assert terms.logp == pytest.approx(logp, abs=1e-4)
        assert terms.molecular_weight == pytest.approx(weight, abs=1e-3)
        assert terms.rotatable_bonds == rotatable and terms.aromatic_proportion == pytest.approx(aromatic)
        by_hand = 0.16 - 0.63 * logp - 0.0062 * weight + 0.066 * rotatable - 0.74 * aromatic
        assert esol_log_solubility(Chem.MolFromSmiles(smiles)) == pytest.approx(by_hand, abs=1e-4)
    assert esol_log_solubility(Chem.MolFromSmiles("c1ccccc1")) == pytest.approx(-2.1269, abs=1e-4)
    # More rotatable bonds and fewer aromatic atoms: butylbenzene has RB 3 and AP 6/10.
    butyl = esol_terms(Chem.MolFromSmiles("CCCCc1ccccc1"))
    assert butyl.rotatable_bonds == 3 and butyl.aromatic_proportion == pytest.approx(0.6)


def test_drug_likeness_and_rule_of_five() -> None:
    paracetamol = drug_likeness(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    assert paracetamol.molecular_weight == pytest.approx(151.165, abs=1e-3)
    assert (paracetamol.hbd, paracetamol.hba) == (2, 3)  # NH + OH; N + 2 O
    assert paracetamol.tpsa == pytest.approx(49.33, abs=0.01) and paracetamol.logp == pytest.approx(1.3506)
    assert paracetamol.lipinski_violations == 0 and paracetamol.lipinski_pass
    wax = drug_likeness(Chem.MolFromSmiles("C" * 40))  # MW 563, logP ~15.7: two violations
    assert wax.lipinski_violations == 2 and not wax.lipinski_pass
    polyol = drug_likeness(Chem.MolFromSmiles("OCC(O)C(O)C(O)C(O)CO"))  # 6 donors, 6 acceptors
    assert (polyol.hbd, polyol.hba, polyol.lipinski_violations, polyol.lipinski_pass) == (6, 6, 1, True)


# -- the synthetic library ----------------------------------------------------------------------


def test_building_blocks_react_at_exactly_one_site() -> None:
    reactions = {
        name: rdChemReactions.ReactionFromSmarts(smarts) for name, smarts in blocks.REACTIONS.items()
    }
    amine = reactions["amide_coupling"].GetReactantTemplate(1)
    roles = [
        (blocks.AMINES, amine),
        (blocks.BROMO_AMINES, amine),
        (blocks.CARBOXYLIC_ACIDS, reactions["amide_coupling"].GetReactantTemplate(0)),
        (blocks.BROMO_ACIDS, reactions["amide_coupling"].GetReactantTemplate(0)),
        (blocks.ALDEHYDES, reactions["reductive_amination"].GetReactantTemplate(0)),
        (blocks.SULFONYL_CHLORIDES, reactions["sulfonamide_formation"].GetReactantTemplate(0)),
        (blocks.ARYL_BROMIDES, reactions["suzuki_coupling"].GetReactantTemplate(0)),
        (blocks.BROMO_ACIDS + blocks.BROMO_AMINES, reactions["suzuki_coupling"].GetReactantTemplate(0)),
        (blocks.BORONIC_ACIDS, reactions["suzuki_coupling"].GetReactantTemplate(1)),
    ]
    for smiles_list, template in roles:
        for smiles in smiles_list:
            molecule = Chem.MolFromSmiles(smiles)
            assert molecule is not None, smiles
            assert len(molecule.GetSubstructMatches(template)) == 1, smiles
        assert len({canonical(s) for s in smiles_list}) == len(smiles_list)  # no block twice


def test_synthetic_library_is_deterministic_valid_and_varied() -> None:
    compounds = list(synthetic_library(600, seed=11))
    assert len(compounds) == 600 and 25_000 < RECIPES < 40_000
    assert [c.id for c in compounds[:3]] == ["MS-000001", "MS-000002", "MS-000003"]
    assert compounds == list(synthetic_library(600, seed=11))
    assert compounds[:50] == list(synthetic_library(50, seed=11))  # a prefix of the same order
    assert [c.smiles for c in compounds] != [c.smiles for c in synthetic_library(600, seed=12)]
    assert len({c.smiles for c in compounds}) == 600
    for compound in compounds:
        molecule = Chem.MolFromSmiles(compound.smiles)
        assert molecule is not None and Chem.MolToSmiles(molecule) == compound.smiles
        assert drug_likeness(molecule).molecular_weight <= MAX_MOLECULAR_WEIGHT
        assert "Br" not in compound.smiles and "B(O)O" not in compound.smiles  # no leftover handles
    routes = Counter(c.route for c in compounds)
    assert len(routes) >= 7, routes
    solubility = [esol_log_solubility(Chem.MolFromSmiles(c.smiles)) for c in compounds]
    assert np.std(solubility) > 0.8  # a property worth learning varies across the library
    with pytest.raises(ValueError, match="count"):
        next(synthetic_library(-1))


def test_write_example_chemistry(tmp_path: Path) -> None:
    (path,) = write_example_chemistry(tmp_path / "examples", 40, 3)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "smiles id" and len(lines) == 41
    assert lines[1] == f"{next(synthetic_library(1, seed=3)).smiles} MS-000001"
    items, failures = split(VirtualScreeningWorkload(path, {}))
    assert len(items) == 40 and failures == []


# -- the example model and the workload end to end ---------------------------------------------
