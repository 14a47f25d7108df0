"""The Ward page: beds with NEWS2 and its trend, rhythm, open alerts (acknowledged from the page)."""

from __future__ import annotations

import time
from typing import Any

from medserve.console.charts import sparkline
from medserve.console.parts import MONITOR_MODEL, ConsoleParts
from medserve.values.access import Action, Caller
from medserve.values.errors import Unsupported


def ward(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    caller.principal.require(Action.READ, MONITOR_MODEL)
    if parts.monitor is None or parts.alerts is None:
        raise Unsupported("the patient monitor is not running on this server")
    now = time.time()
    beds = []
    for bed in parts.monitor.board.beds():
        values = [score for _, score in bed.trend]
        beds.append(
            {
                "bed": bed,
                "trend": sparkline(values, f"NEWS2 trend of bed {bed.sequence_id}", top=20) if values else "",
                "direction": "rising" if bed.change > 0 else "falling" if bed.change < 0 else "steady",
                "age_s": max(0.0, now - bed.updated_at),
            }
        )
    return {
        "beds": beds,
        "alerts": parts.alerts.list(unacknowledged_only=True, limit=200),
        "acknowledge": caller.principal.may(Action.ACKNOWLEDGE, MONITOR_MODEL),
    }
