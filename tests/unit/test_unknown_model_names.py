"""A model name that does not exist is said not to exist, with the nearest name the caller may see."""

from __future__ import annotations

from pathlib import Path

import pytest

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.repository.repository import ModelRepository
from medserve.security.authenticate import Authenticator
from medserve.values.access import Caller, Principal, Role
from medserve.values.errors import ModelNotFound, PermissionDenied


def service_over(root: Path, *models: str) -> InferenceService:
    for model in models:
        (root / model).mkdir(parents=True)
    registry = ModelRegistry(ModelRepository(root), ServingMetrics())
    return InferenceService(registry, Authenticator(None, None, disabled=True))


def caller(*models: str) -> Caller:
    principal = Principal("ward-7", Role.SERVICE, frozenset(models) if models else None, "token:x")
    return Caller(principal, "http", "", "127.0.0.1")


def test_a_misspelt_name_gets_the_nearest_model(tmp_path: Path) -> None:
    service = service_over(tmp_path, "simple", "simple_nobatch", "chest_xray_classifier")
    with pytest.raises(ModelNotFound) as raised:
        service.model_config("simpel", "", caller())
    assert str(raised.value) == "model 'simpel' does not exist — did you mean 'simple'?"
    with pytest.raises(ModelNotFound) as raised:
        service.model_config("chest_xray", "", caller())
    assert str(raised.value) == "model 'chest_xray' does not exist — did you mean 'chest_xray_classifier'?"


def test_a_model_in_the_repository_but_not_loaded_is_not_loaded(tmp_path: Path) -> None:
    service = service_over(tmp_path, "simple")
    with pytest.raises(ModelNotFound) as raised:
        service.model_config("simple", "", caller())
    assert str(raised.value) == "model 'simple' is not loaded"


def test_a_caller_granted_other_models_learns_nothing_of_them(tmp_path: Path) -> None:
    service = service_over(tmp_path, "simple", "simple_nobatch")
    # granted a name that does not exist (a typo at grant time): no model it may not see is named
    with pytest.raises(ModelNotFound) as raised:
        service.model_config("simpel", "", caller("simpel"))
    assert str(raised.value) == "model 'simpel' does not exist"
    # asking for a name outside its grants: refused before anything is said about the name
    with pytest.raises(PermissionDenied) as denied:
        service.model_config("simpel", "", caller("simple_nobatch"))
    assert "simple_nobatch" not in str(denied.value) and "did you mean" not in str(denied.value)
