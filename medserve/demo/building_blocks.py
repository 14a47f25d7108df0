"""Building blocks and reactions of the synthetic screening library, as SMILES and reaction SMARTS.

Common, purchasable-style reagents (no stereocentres, each with exactly one reactive site for its
role) and six robust medicinal-chemistry reactions. ``medserve.demo.compound_library``
enumerates their products; the tests check that every block parses and reacts at exactly one site.
"""

from __future__ import annotations

AMINE_SITE = "[NX3;H2,H1;!$(N[#6,#16]=[#7,#8,#16])]"
"""A primary or secondary amine nitrogen (aliphatic or aniline), not an amide, sulfonamide or amidine."""


def _amine(atom_map: int) -> str:
    return f"{AMINE_SITE[:-1]}:{atom_map}]"


REACTIONS: dict[str, str] = {
    "amide_coupling": f"[C:1](=[O:2])[OX2H1].{_amine(3)}>>[C:1](=[O:2])[N:3]",
    "suzuki_coupling": "[c:1][Br].[c:2][BX3]([OX2H1])[OX2H1]>>[c:1]-[c:2]",
    "reductive_amination": f"[CX3H1:1](=O)[#6:2].{_amine(3)}>>[C:1]([#6:2])[N:3]",
    "sulfonamide_formation": f"[S:1](=[O:2])(=[O:3])[Cl].{_amine(4)}>>[S:1](=[O:2])(=[O:3])[N:4]",
    "urea_formation": f"{_amine(1)}.{_amine(2)}>>[N:1]C(=O)[N:2]",
}
"""Reaction SMARTS by name (reactants in the order the enumeration passes them)."""

AMINES: tuple[str, ...] = (
    "CN",
    "CCN",
    "CC(C)N",
    "CC(C)(C)N",
    "NC1CC1",
    "NC1CCC1",
    "NC1CCCC1",
    "NC1CCCCC1",
    "NCc1ccccc1",
    "NCc1ccc(F)cc1",
    "NCc1ccc(OC)cc1",
    "NCCc1ccccc1",
    "Nc1ccccc1",
    "Nc1ccc(Cl)cc1",
    "COc1cccc(N)c1",
    "Nc1ccc(C(F)(F)F)cc1",
    "Nc1ccc(C#N)cc1",
    "Nc1cccnc1",
    "Nc1nccs1",
    "Nc1ncccn1",
    "Cn1cc(N)cn1",
    "NC1CCOCC1",
    "COCCN",
    "NCCO",
    "COC(=O)CN",
    "NCc1ccco1",
    "NCc1ccccn1",
    "NCCN1CCOCC1",
    "CNC",
    "C1CNC1",
    "C1CCNC1",
    "FC1CCNC1",
    "C1CCNCC1",
    "OC1CCNCC1",
    "FC1(F)CCNCC1",
    "NC(=O)C1CCNCC1",
    "C1COCCN1",
    "C1CSCCN1",
    "CN1CCNCC1",
    "CC(C)(C)OC(=O)N1CCNCC1",
    "C1CC(CCN1)c1ccccc1",
    "C1Cc2ccccc2CN1",
    "CNCc1ccccc1",
    "CNC1CCCCC1",
)
"""Primary and secondary amines (one reactive N-H each)."""

CARBOXYLIC_ACIDS: tuple[str, ...] = (
    "CC(=O)O",
    "CC(C)C(=O)O",
    "CC(C)(C)C(=O)O",
    "COCC(=O)O",
    "OC(=O)C1CC1",
    "OC(=O)C1CCC1",
    "OC(=O)C1CCCCC1",
    "OC(=O)C1CCOCC1",
    "CC(=O)N1CCC(C(=O)O)CC1",
    "CC(C)(C)OC(=O)NCC(=O)O",
    "OC(=O)Cc1ccccc1",
    "OC(=O)CCc1ccccc1",
    "OC(=O)/C=C/c1ccccc1",
    "OC(=O)c1ccccc1",
    "OC(=O)c1ccc(F)cc1",
    "OC(=O)c1cccc(Cl)c1",
    "COc1ccc(C(=O)O)cc1",
    "COc1ccc(C(=O)O)cc1OC",
    "OC(=O)c1ccc(C(F)(F)F)cc1",
    "N#Cc1ccc(C(=O)O)cc1",
    "OC(=O)c1ccc(O)cc1",
    "CC(=O)Nc1ccc(C(=O)O)cc1",
    "CS(=O)(=O)c1ccc(C(=O)O)cc1",
    "OC(=O)c1ccc(-c2ccccc2)cc1",
    "OC(=O)c1ccc2ccccc2c1",
    "OC(=O)c1cccnc1",
    "OC(=O)c1ccncc1",
    "OC(=O)c1ccccn1",
    "OC(=O)c1cccnc1Cl",
    "OC(=O)c1cnccn1",
    "OC(=O)c1ccco1",
    "OC(=O)c1cccs1",
    "Cc1nc(C(=O)O)cs1",
    "Cc1cc(C(=O)O)no1",
    "Cn1cc(C(=O)O)cn1",
    "OC(=O)c1cc2ccccc2[nH]1",
    "Cn1cc(C(=O)O)c2ccccc21",
    "OC(=O)c1cc2ccccc2o1",
    "OC(=O)c1cc2ccccc2s1",
    "OC(=O)c1cnc2ccccc2c1",
)
"""Carboxylic acids (one CO2H each, no aryl bromide)."""

ALDEHYDES: tuple[str, ...] = (
    "CC(C)C=O",
    "O=CC1CC1",
    "O=CC1CCCCC1",
    "O=CC1CCOCC1",
    "O=Cc1ccccc1",
    "O=Cc1ccc(F)cc1",
    "O=Cc1ccc(Cl)cc1",
    "COc1ccc(C=O)cc1",
    "N#Cc1cccc(C=O)c1",
    "CN(C)c1ccc(C=O)cc1",
    "O=Cc1cccc(Oc2ccccc2)c1",
    "O=Cc1ccc2ccccc2c1",
    "O=Cc1cccnc1",
    "O=Cc1ccncc1",
    "O=Cc1ccnc2ccccc12",
    "O=Cc1cccs1",
    "O=Cc1ccco1",
    "O=Cc1nccs1",
    "Cn1cc(C=O)cn1",
    "O=Cc1c[nH]c2ccccc12",
)
"""Aldehydes for reductive amination."""

SULFONYL_CHLORIDES: tuple[str, ...] = (
    "CS(=O)(=O)Cl",
    "O=S(=O)(Cl)C1CC1",
    "CN(C)S(=O)(=O)Cl",
    "O=S(=O)(Cl)c1ccccc1",
    "Cc1ccc(S(=O)(=O)Cl)cc1",
    "O=S(=O)(Cl)c1ccc(F)cc1",
    "O=S(=O)(Cl)c1cccc(Cl)c1",
    "COc1ccc(S(=O)(=O)Cl)cc1",
    "CC(=O)Nc1ccc(S(=O)(=O)Cl)cc1",
    "O=S(=O)(Cl)c1cccnc1",
    "O=S(=O)(Cl)c1cccs1",
    "Cn1cnc(S(=O)(=O)Cl)c1",
)
"""Sulfonyl chlorides for sulfonamides."""

ARYL_BROMIDES: tuple[str, ...] = (
    "Brc1ccccc1",
    "Fc1ccc(Br)cc1",
    "COc1ccc(Br)cc1",
    "N#Cc1ccc(Br)cc1",
    "FC(F)(F)c1cccc(Br)c1",
    "CN(C)c1ccc(Br)cc1",
    "CS(=O)(=O)c1ccc(Br)cc1",
    "Brc1ccc2ccccc2c1",
    "Brc1cccnc1",
    "Brc1ccccn1",
    "Brc1cncnc1",
    "Brc1cccs1",
    "Brc1nccs1",
    "Cn1cc(Br)cn1",
    "Brc1ccc2ncccc2c1",
    "Brc1ccc2[nH]ccc2c1",
)
"""Aryl and heteroaryl bromides for Suzuki couplings."""

BROMO_ACIDS: tuple[str, ...] = (
    "OC(=O)c1ccc(Br)cc1",
    "OC(=O)c1cccc(Br)c1",
    "Cc1cc(C(=O)O)ccc1Br",
    "OC(=O)Cc1ccc(Br)cc1",
    "OC(=O)c1ccc(Br)nc1",
    "OC(=O)c1cncc(Br)c1",
    "OC(=O)c1ccc(Br)s1",
    "OC(=O)c1ccc(Br)o1",
    "OC(=O)c1csc(Br)n1",
    "OC(=O)c1cc2cc(Br)ccc2[nH]1",
)
"""Bromoaryl carboxylic acids: amide coupling, then Suzuki coupling (three components)."""

BROMO_AMINES: tuple[str, ...] = (
    "Nc1ccc(Br)cc1",
    "Nc1cccc(Br)c1",
    "Nc1ccc(Br)cn1",
    "NCc1ccc(Br)cc1",
    "NCCc1ccc(Br)cc1",
    "Brc1ccc(C2CCNCC2)cc1",
    "Brc1ccc(N2CCNCC2)cc1",
    "Brc1ccc2c(c1)CCNC2",
)
"""Bromoaryl amines: acylation, sulfonylation or reductive amination, then Suzuki coupling."""

BORONIC_ACIDS: tuple[str, ...] = (
    "OB(O)c1ccccc1",
    "Cc1ccccc1B(O)O",
    "OB(O)c1ccc(F)cc1",
    "OB(O)c1cccc(Cl)c1",
    "COc1ccc(B(O)O)cc1",
    "COc1ccc(B(O)O)cc1OC",
    "OB(O)c1ccc(C(F)(F)F)cc1",
    "N#Cc1ccc(B(O)O)cc1",
    "OCc1cccc(B(O)O)c1",
    "CC(=O)c1ccc(B(O)O)cc1",
    "NC(=O)c1ccc(B(O)O)cc1",
    "CS(=O)(=O)c1ccc(B(O)O)cc1",
    "CN(C)c1ccc(B(O)O)cc1",
    "OB(O)c1ccc(N2CCOCC2)cc1",
    "OB(O)c1ccc2ccccc2c1",
    "OB(O)c1cccnc1",
    "OB(O)c1ccncc1",
    "COc1ccc(B(O)O)cn1",
    "OB(O)c1cncnc1",
    "OB(O)c1cccs1",
    "OB(O)c1ccsc1",
    "OB(O)c1ccco1",
    "Cn1cc(B(O)O)cn1",
    "OB(O)c1cc2ccccc2o1",
    "OB(O)c1cnc2ccccc2c1",
)
"""Aryl and heteroaryl boronic acids for Suzuki couplings."""
