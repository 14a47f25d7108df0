"""The operator console: server-rendered pages over what the server knows (models, devices, live
latency, jobs, imaging, the ward, the audit trail, profiles and the fleet planner).

This package assembles each page's data from the same calls the JSON doors make and renders it with
the templates and the small CSS and JavaScript shipped beside it (no CDN: it must work on an isolated
network); ``medserve.transport.console`` is its HTTP door (sign-in, sessions, CSRF, the routes).
"""
