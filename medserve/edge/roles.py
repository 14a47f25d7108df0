"""The hub and edge roles built from settings (either, both or neither)."""

from __future__ import annotations

import socket

from medserve.core.service import InferenceService
from medserve.edge.client import HubClient, HubLink
from medserve.edge.hub import Hub, HubSettings
from medserve.edge.manifest import valid_name
from medserve.edge.offload import HubOverflow
from medserve.edge.sync import EdgeIdentity, EdgeSync
from medserve.edge.uplink import UplinkOutbox
from medserve.repository.repository import ModelRepository
from medserve.security.signing import TrustedKeys, load_private_key
from medserve.settings import Settings
from medserve.store.database import Database
from medserve.store.leases import LeaseBook
from medserve.values.errors import InvalidConfig, InvalidInput


def _keys(settings: Settings) -> TrustedKeys:
    return TrustedKeys.load(settings.trusted_signing_keys)


def build_hub(settings: Settings, database: Database) -> Hub | None:
    if not settings.hub_enabled:
        return None
    if settings.hub_signing_key is None:
        raise InvalidConfig("hub_enabled needs hub_signing_key (the key manifests are signed with)")
    for name, group in settings.hub_edges.items():
        try:
            valid_name(group, f"hub_edges['{name}']")
        except InvalidInput as exc:
            raise InvalidConfig(str(exc)) from None
    return Hub(
        database,
        ModelRepository(settings.repository),
        _keys(settings),
        HubSettings(load_private_key(settings.hub_signing_key), dict(settings.hub_edges)),
    )


def build_edge(
    settings: Settings, service: InferenceService, database: Database, leases: LeaseBook, chain: str
) -> EdgeSync | None:
    if not settings.edge_hub_url:
        return None
    if not settings.edge_hub_url.startswith(("http://", "https://")):
        raise InvalidConfig(
            f"edge_hub_url must start with http:// or https://, not {settings.edge_hub_url!r}"
        )
    try:
        group = valid_name(settings.edge_group, "edge_group")
    except InvalidInput as exc:
        raise InvalidConfig(str(exc)) from None
    if not settings.trusted_signing_keys:
        raise InvalidConfig("an edge needs trusted_signing_keys: the hub's manifest key and the publishers'")
    link = HubLink(
        settings.edge_hub_url,
        settings.edge_token,
        settings.edge_tls_certfile,
        settings.edge_tls_keyfile,
        settings.edge_tls_ca,
    )
    client = HubClient(link)
    outbox = UplinkOutbox(
        database,
        client,
        leases,
        chain=chain,
        max_backlog=settings.edge_max_backlog,
        interval_s=settings.edge_uplink_interval_s,
    )
    if settings.edge_offload_models:
        service.overflow = HubOverflow(client, settings.edge_offload_models)
    identity = EdgeIdentity(settings.replica_id or socket.gethostname(), group, settings.repository)
    return EdgeSync(
        service, database, client, _keys(settings), outbox, identity, settings.edge_sync_interval_s
    )
