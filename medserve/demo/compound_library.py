"""A deterministic synthetic screening library: combinatorial products of built-in building blocks.

The recipes are every combination of ``building_blocks`` along nine routes: amide coupling,
reductive amination, sulfonamide and urea formation and Suzuki coupling between two blocks, and four
three-component routes (a bromoaryl acid or amine is acylated, sulfonylated or reductively aminated,
then Suzuki-coupled with a boronic acid): about 30,000 recipes in all. A seed shuffles their order;
products are made lazily with RDKit reactions, sanitised, written as canonical SMILES, deduplicated
and kept when drug-sized (molecular weight at most ``MAX_MOLECULAR_WEIGHT``). Compounds are numbered
in the order they come, ``MS-000001`` onwards, so the first ``n`` of a seed are the same every time.

Nothing is downloaded: the library exists to give the example models and jobs meaningful,
varied, valid drug-like molecules. It is not a real vendor catalogue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdChemReactions

from medserve.clinical.chemistry.drug_likeness import molecular_weight
from medserve.demo import building_blocks as blocks

MAX_MOLECULAR_WEIGHT = 600.0
"""Products heavier than this (g/mol) are left out of the library."""

ID_PREFIX = "MS-"


@dataclass(frozen=True)
class LibraryCompound:
    """One compound of the synthetic library."""

    id: str
    smiles: str
    """Canonical RDKit SMILES."""
    route: str
    """The reactions that made it, e.g. ``"amide_coupling+suzuki_coupling"``."""


@dataclass(frozen=True)
class _Route:
    reaction: str
    first: tuple[str, ...]
    second: tuple[str, ...]
    then_suzuki: bool
    symmetric: bool = False
    """Both reactants come from the same list and (i, j) equals (j, i): only i <= j is made."""

    @property
    def name(self) -> str:
        return f"{self.reaction}+suzuki_coupling" if self.then_suzuki else self.reaction

    @property
    def pairs(self) -> int:
        n = len(self.first)
        return n * (n + 1) // 2 if self.symmetric else len(self.first) * len(self.second)

    @property
    def size(self) -> int:
        return self.pairs * (len(blocks.BORONIC_ACIDS) if self.then_suzuki else 1)


ROUTES: tuple[_Route, ...] = (
    _Route("amide_coupling", blocks.CARBOXYLIC_ACIDS, blocks.AMINES, then_suzuki=False),
    _Route("reductive_amination", blocks.ALDEHYDES, blocks.AMINES, then_suzuki=False),
    _Route("sulfonamide_formation", blocks.SULFONYL_CHLORIDES, blocks.AMINES, then_suzuki=False),
    _Route("urea_formation", blocks.AMINES, blocks.AMINES, then_suzuki=False, symmetric=True),
    _Route("suzuki_coupling", blocks.ARYL_BROMIDES, blocks.BORONIC_ACIDS, then_suzuki=False),
    _Route("amide_coupling", blocks.BROMO_ACIDS, blocks.AMINES, then_suzuki=True),
    _Route("amide_coupling", blocks.CARBOXYLIC_ACIDS, blocks.BROMO_AMINES, then_suzuki=True),
    _Route("sulfonamide_formation", blocks.SULFONYL_CHLORIDES, blocks.BROMO_AMINES, then_suzuki=True),
    _Route("reductive_amination", blocks.ALDEHYDES, blocks.BROMO_AMINES, then_suzuki=True),
)
"""The enumeration routes, in recipe-number order."""

RECIPES = sum(route.size for route in ROUTES)
"""How many recipes the routes give (before deduplication and the weight limit)."""


def synthetic_library(count: int | None = None, *, seed: int = 0) -> Iterator[LibraryCompound]:
    """Yield up to ``count`` unique compounds (all of them when None) in the order drawn by ``seed``.

    Deterministic for a given seed; raises ``ValueError`` for a negative ``count``."""
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    enumerator = _Enumerator()
    seen: set[str] = set()
    order = np.random.default_rng(seed).permutation(RECIPES)
    for recipe in order:
        if count is not None and len(seen) >= count:
            return
        made = enumerator.product(int(recipe))
        if made is None or made[0] in seen:
            continue
        seen.add(made[0])
        yield LibraryCompound(id=f"{ID_PREFIX}{len(seen):06d}", smiles=made[0], route=made[1])


def write_example_chemistry(out_dir: Path, n: int, seed: int) -> list[Path]:
    """Write ``n`` compounds of the synthetic library drawn with ``seed`` (all of them, about 29,800,
    when ``n`` is larger) to ``out_dir/screening_library.smi`` ("SMILES id" per line, with a header)
    and return that path.

    The file is the input of the example virtual-screening job."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "screening_library.smi"
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("smiles id\n")
        for compound in synthetic_library(n, seed=seed):
            handle.write(f"{compound.smiles} {compound.id}\n")
    partial.replace(path)
    return [path]


class _Enumerator:
    """Makes the product of a recipe number; caches reaction objects, reagents and the
    first-step intermediates of three-component routes (a few thousand at most)."""

    def __init__(self) -> None:
        self._reactions = {
            name: rdChemReactions.ReactionFromSmarts(smarts) for name, smarts in blocks.REACTIONS.items()
        }
        for reaction in self._reactions.values():
            reaction.Initialize()
        self._molecules: dict[str, Chem.Mol] = {}
        self._intermediates: dict[tuple[int, int, int], Chem.Mol | None] = {}

    def product(self, recipe: int) -> tuple[str, str] | None:
        """``(canonical SMILES, route name)`` of recipe number ``recipe``, or None when the
        reaction gives nothing usable or the product is too heavy."""
        route_number, offset = _locate(recipe)
        route = ROUTES[route_number]
        boronic = -1
        if route.then_suzuki:
            offset, boronic = divmod(offset, len(blocks.BORONIC_ACIDS))
        i, j = _pair(route, offset)
        first, second = self._molecule(route.first[i]), self._molecule(route.second[j])
        if route.then_suzuki:  # the intermediate is shared by every boronic acid: keep it
            key = (route_number, i, j)
            if key not in self._intermediates:
                self._intermediates[key] = self._react(route.reaction, first, second)
            molecule = self._intermediates[key]
        else:
            molecule = self._react(route.reaction, first, second)
        if molecule is not None and route.then_suzuki:
            boronic_acid = self._molecule(blocks.BORONIC_ACIDS[boronic])
            molecule = self._react("suzuki_coupling", molecule, boronic_acid)
        if molecule is None or molecular_weight(molecule) > MAX_MOLECULAR_WEIGHT:
            return None
        return Chem.MolToSmiles(molecule), route.name

    def _molecule(self, smiles: str) -> Chem.Mol:
        if smiles not in self._molecules:
            self._molecules[smiles] = Chem.MolFromSmiles(smiles)
        return self._molecules[smiles]

    def _react(self, reaction: str, first: Chem.Mol, second: Chem.Mol) -> Chem.Mol | None:
        """The first product that sanitises."""
        with rdBase.BlockLogs():
            for products in self._reactions[reaction].RunReactants((first, second)):
                candidate: Chem.Mol = products[0]
                try:
                    Chem.SanitizeMol(candidate)
                except (Chem.MolSanitizeException, ValueError, RuntimeError):
                    continue
                return candidate
        return None


def _locate(recipe: int) -> tuple[int, int]:
    """Route number and offset within the route of a recipe number."""
    if not 0 <= recipe < RECIPES:
        raise ValueError(f"recipe {recipe} is out of range 0..{RECIPES - 1}")
    for number, route in enumerate(ROUTES):
        if recipe < route.size:
            return number, recipe
        recipe -= route.size
    raise AssertionError("unreachable: recipe checked against RECIPES")


def _pair(route: _Route, offset: int) -> tuple[int, int]:
    if not route.symmetric:
        return divmod(offset, len(route.second))
    return _triangle(offset, len(route.first))


def _triangle(offset: int, n: int) -> tuple[int, int]:
    """The ``offset``-th pair (i, j) with i <= j < n, in row order."""
    i = 0
    row = n
    while offset >= row:
        offset -= row
        i += 1
        row -= 1
    return i, i + offset
