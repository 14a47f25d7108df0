"""Write the example model repository: <dir>/<model>/config.yaml and <dir>/<model>/<version>/model.onnx.

Each model is assembled in a hidden staging folder beside its final place and renamed into place in
one step, so an interrupted build never leaves a half-written model; models already present are
reused unless ``force``. Builders in several processes are serialised by a lock file
(``.medserve-examples.lock``) where the platform has ``fcntl``. Repository loaders should skip the
hidden (dot-prefixed) entries this leaves behind.

The trained examples need torch and import it only when they are built: ``chest_xray_classifier``,
``ct_lesion_segmentation`` (MONAI), ``ecg_rhythm_classifier``, ``variant_scorer``,
``solubility_predictor`` (which also needs RDKit) and ``occupancy_forecaster``. Each trains a fixed,
seeded number of steps on one torch thread (``_profile``: the ``default`` profile, or the smaller
``test`` profile of the test suite), so every build of a profile makes the same model; each is
scored on held-out synthetic data and the build fails with ``QualityFloorMissed`` when a documented
floor is missed. All learn from synthetic or computed data. Progress (per model: steps, time left,
held-out figures) goes to the ``medserve.demo.models.progress`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medserve.demo.models._profile import Profile, using_profile
from medserve.demo.models._progress import announce
from medserve.demo.models._spec import ExampleModel
from medserve.demo.models._workers import build_in_workers, worker_count
from medserve.demo.models.chest_xray import CHEST_XRAY_CLASSIFIER
from medserve.demo.models.config_file import write_config
from medserve.demo.models.ct_segmentation import CT_LESION_SEGMENTATION
from medserve.demo.models.ecg_rhythm import ECG_RHYTHM_CLASSIFIER
from medserve.demo.models.occupancy_forecaster import OCCUPANCY_FORECASTER
from medserve.demo.models.solubility_predictor import SOLUBILITY_PREDICTOR
from medserve.demo.models.test_models import TEST_MODELS
from medserve.demo.models.variant_scorer import VARIANT_SCORER

_log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"
LOCK_FILE = ".medserve-examples.lock"
_STAGING = ".staging-"
_RETIRED = ".retired-"

_CATALOGUE: dict[str, ExampleModel] = {
    model.name: model
    for model in (
        CHEST_XRAY_CLASSIFIER,
        CT_LESION_SEGMENTATION,
        ECG_RHYTHM_CLASSIFIER,
        VARIANT_SCORER,
        SOLUBILITY_PREDICTOR,
        OCCUPANCY_FORECASTER,
        *TEST_MODELS,
    )
}

EXAMPLE_MODELS: tuple[str, ...] = tuple(_CATALOGUE)
"""Names of every example model, the clinical demonstrations first."""


def build_example_repository(
    directory: Path,
    *,
    models: Iterable[str] | None = None,
    force: bool = False,
    profile: Profile | None = None,
    workers: int | None = None,
) -> list[str]:
    """Write the named example models (all when ``models`` is None) under ``directory``, the trained
    ones with ``profile``'s steps and floors (``$MEDSERVE_EXAMPLES_PROFILE``'s when None), several at
    once in ``workers`` processes (default: one per core) when more than one is to be trained.

    A model already complete on disk is kept unless ``force``. Returns the names of the models
    written by this call, in catalogue order. Raises ``ValueError`` for an unknown model name,
    profile or a worker count below 1, ``QualityFloorMissed`` when a trained model misses a floor
    (models finished before stay).
    """
    selected = _select(models)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with using_profile(profile) as chosen, _locked(directory / LOCK_FILE) as exclusive:
        if exclusive:
            _remove_leftovers(directory)
        wanted = [example for example in selected if force or not is_complete(directory, example.name)]
        trained = [example.name for example in wanted if example.trained]
        if trained:
            processes = worker_count(len(trained), workers)
            announce(
                "examples",
                f"training {len(trained)} model(s) with the {chosen} profile in {directory} "
                f"({processes} at a time)",
            )
            if processes > 1:
                build_in_workers(_build_named, directory, trained, chosen, processes)
            else:
                for name in trained:
                    _build_named(directory, name)
        for example in wanted:
            if not example.trained:
                _build_one(directory, example)
    return [example.name for example in wanted]


def is_complete(directory: Path, name: str) -> bool:
    """Whether ``directory/name`` holds a config and every version's model file."""
    example = _CATALOGUE[name]
    root = Path(directory) / name
    return (root / CONFIG_FILE).is_file() and all(
        (root / str(version) / MODEL_FILE).is_file() for version in example.versions
    )


def _select(models: Iterable[str] | None) -> list[ExampleModel]:
    if models is None:
        return list(_CATALOGUE.values())
    wanted = set(models)
    unknown = sorted(wanted.difference(_CATALOGUE))
    if unknown:
        raise ValueError(
            f"unknown example model(s) {', '.join(unknown)}; expected some of {', '.join(EXAMPLE_MODELS)}"
        )
    return [example for name, example in _CATALOGUE.items() if name in wanted]


def _build_named(directory: Path, name: str) -> None:
    example = _CATALOGUE[name]
    if example.trained:
        announce(name, "building")
    _build_one(directory, example)


def _build_one(directory: Path, example: ExampleModel) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{example.name}-", dir=directory))
    try:
        write_config(staging / CONFIG_FILE, example)
        for version in example.versions:
            version_dir = staging / str(version)
            version_dir.mkdir()
            example.write(version, version_dir / MODEL_FILE)
        _replace(staging, directory / example.name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, final: Path) -> None:
    """Move the finished ``staging`` folder to ``final``, retiring any model already there."""
    retired: Path | None = None
    if final.exists() or final.is_symlink():
        retired = Path(tempfile.mkdtemp(prefix=f"{_RETIRED}{final.name}-", dir=final.parent))
        os.replace(final, retired / final.name)
    os.replace(staging, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _remove_leftovers(directory: Path) -> None:
    """Delete staging/retired folders of builds that died; only safe while holding the lock."""
    for entry in directory.iterdir():
        if entry.name.startswith((_STAGING, _RETIRED)) and entry.is_dir():
            _log.info("removing leftover %s from an interrupted build", entry)
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields whether a lock could be taken at all."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds in parallel processes are not serialised
        yield False
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
