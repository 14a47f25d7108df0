"""Cheap descriptors a hit list is filtered by, and Lipinski's rule of five.

About 0.1 ms a molecule, nearly all of it the Crippen logP; the strict rotatable-bond count would
nearly double that, so it is left to ``solubility.esol_terms``, which needs it.

Lipinski (Adv. Drug Deliv. Rev. 1997, 23, 3-25): poor oral absorption is more likely when more than
one of MW > 500, logP > 5, H-bond donors > 5 (sum of OH and NH) and H-bond acceptors > 10 (sum of N
and O) holds. Donors and acceptors are counted as Lipinski did (RDKit's ``NumLipinskiHBD/HBA``);
logP is RDKit's Wildman-Crippen estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem import Descriptors, rdMolDescriptors

MAX_MOLECULAR_WEIGHT = 500.0
MAX_LOGP = 5.0
MAX_DONORS = 5
MAX_ACCEPTORS = 10


@dataclass(frozen=True)
class DrugLikeness:
    """Descriptors of one molecule."""

    molecular_weight: float
    logp: float
    hbd: int
    hba: int
    tpsa: float
    """Topological polar surface area (Ertl), in square angstroms."""

    @property
    def lipinski_violations(self) -> int:
        """How many of the four rule-of-five limits the molecule exceeds."""
        return (
            int(self.molecular_weight > MAX_MOLECULAR_WEIGHT)
            + int(self.logp > MAX_LOGP)
            + int(self.hbd > MAX_DONORS)
            + int(self.hba > MAX_ACCEPTORS)
        )

    @property
    def lipinski_pass(self) -> bool:
        """At most one violation, as Lipinski's rule reads."""
        return self.lipinski_violations <= 1


def molecular_weight(molecule: Chem.Mol) -> float:
    """Average molecular weight in g/mol (RDKit's ``Descriptors.MolWt``, implicit hydrogens included)."""
    return float(Descriptors.MolWt(molecule))  # type: ignore[attr-defined]  # made at import by RDKit


def crippen_logp(molecule: Chem.Mol) -> float:
    """Wildman-Crippen logP (RDKit's ``Crippen.MolLogP``)."""
    logp, _refractivity = rdMolDescriptors.CalcCrippenDescriptors(molecule)
    return float(logp)


def drug_likeness(molecule: Chem.Mol) -> DrugLikeness:
    """The descriptors of a sanitised molecule."""
    return DrugLikeness(
        molecular_weight=molecular_weight(molecule),
        logp=crippen_logp(molecule),
        hbd=int(rdMolDescriptors.CalcNumLipinskiHBD(molecule)),
        hba=int(rdMolDescriptors.CalcNumLipinskiHBA(molecule)),
        tpsa=float(rdMolDescriptors.CalcTPSA(molecule)),
    )
