"""The hardware layer: device discovery and fingerprint (``devices``), energy meters and accounting
(``energy``), and energy metrics (``metrics``). Optional libraries (pynvml, torch, OpenVINO) are
imported only when probed."""
