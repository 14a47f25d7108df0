"""Edge and hub: models flow down signed (manifests per edge group), records flow up exactly once
(a durable uplink outbox deduplicated at the hub), and an edge keeps serving while its link is down.
See docs/EDGE.md."""
