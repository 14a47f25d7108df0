"""ESOL: estimated aqueous solubility from structure (Delaney, J. Chem. Inf. Comput. Sci. 2004,
44, 1000-1005, "ESOL: Estimating Aqueous Solubility Directly from Molecular Structure").

    log S = 0.16 - 0.63 clogP - 0.0062 MW + 0.066 RB - 0.74 AP

with S in mol/L, clogP the octanol/water partition coefficient, MW the molecular weight (g/mol), RB
the number of rotatable bonds and AP the aromatic proportion (aromatic heavy atoms / heavy atoms).
Delaney fitted the coefficients with Daylight's clogP; here clogP is RDKit's Wildman-Crippen
``MolLogP`` and RB RDKit's (strict) rotatable-bond count, so values differ slightly from the paper's.
It is a computed property: the example model learns it from fingerprints as a demonstration target,
not as a measured solubility.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

from medserve.clinical.chemistry.drug_likeness import crippen_logp, molecular_weight

INTERCEPT = 0.16
LOGP = -0.63
MOLECULAR_WEIGHT = -0.0062
ROTATABLE_BONDS = 0.066
AROMATIC_PROPORTION = -0.74


@dataclass(frozen=True)
class EsolTerms:
    """The four descriptors of the ESOL equation for one molecule."""

    logp: float
    molecular_weight: float
    rotatable_bonds: int
    aromatic_proportion: float

    @property
    def log_solubility(self) -> float:
        """ESOL log10 solubility in mol/L."""
        return (
            INTERCEPT
            + LOGP * self.logp
            + MOLECULAR_WEIGHT * self.molecular_weight
            + ROTATABLE_BONDS * self.rotatable_bonds
            + AROMATIC_PROPORTION * self.aromatic_proportion
        )


def esol_terms(molecule: Chem.Mol) -> EsolTerms:
    """ESOL's descriptors of a sanitised molecule; raises ``ValueError`` for one without heavy atoms."""
    heavy = molecule.GetNumHeavyAtoms()
    if heavy == 0:
        raise ValueError("ESOL needs a molecule with at least one heavy atom")
    aromatic = sum(1 for atom in molecule.GetAtoms() if atom.GetIsAromatic() and atom.GetAtomicNum() > 1)
    return EsolTerms(
        logp=crippen_logp(molecule),
        molecular_weight=molecular_weight(molecule),
        rotatable_bonds=int(rdMolDescriptors.CalcNumRotatableBonds(molecule)),
        aromatic_proportion=aromatic / heavy,
    )


def esol_log_solubility(molecule: Chem.Mol) -> float:
    """ESOL estimate of log10 aqueous solubility (mol/L) of a sanitised molecule."""
    return esol_terms(molecule).log_solubility
